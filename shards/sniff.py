"""What a file holds, from its first bytes: audio container/codec signatures and common non-audio content.

:func:`sniff` reads at most two small blocks (the head, and the first block after an ID3v2 tag) and never
parses further. Its verdict decides which decoder gets a file (``shards.audio``) and whether a file whose
name is not an audio name is audio after all (``shards.audio.is_audio_file``). Only content a signature
recognises goes to FFmpeg: FFmpeg's own probing accepts random bytes as some raw format now and then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HEAD_BYTES = 4096  # enough for every signature below and for two chained MPEG/ADTS frame headers


@dataclass(frozen=True)
class Sniff:
    kind: str  # e.g. "wav", "mp3", "ogg-opus", "mp4", "html", "jpeg"; "unknown" when nothing matched
    media: bool  # a media container/stream that a decoder may open (audio, or video that may carry audio)
    audio: bool  # the content alone says "audio" (used for files whose name is not an audio name)
    what: str  # human words for reasons: "an HTML page", "a JPEG image", "MP4 (brand 'M4A ')"


UNKNOWN = Sniff("unknown", False, False, "unrecognised content")

# MPEG-1/2/2.5 audio: bitrates (kbit/s) by (version is MPEG-1, layer) and sample rates by version
_MPA_BITRATES = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPA_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}
_ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
_ASF_GUID = bytes.fromhex("3026b2758e66cf11a6d900aa0062ce6c")
_W64_GUID = b"riff\x2e\x91\xcf\x11\xa5\xd6\x28\xdb\x04\xc1\x00\x00"
_MP4_AUDIO_BRANDS = {b"M4A ", b"M4B ", b"M4P ", b"M4R ", b"F4A ", b"F4B "}
_ISO_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _mpa_frame_len(h: bytes) -> int:
    """Length in bytes of the MPEG audio frame whose 4-byte header is ``h``; 0 if ``h`` is not one."""
    if len(h) < 4 or h[0] != 0xFF or (h[1] & 0xE0) != 0xE0:
        return 0
    version = (h[1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = 4 - ((h[1] >> 1) & 3)  # 4 means reserved
    br_i, sr_i, pad = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
    if version == 1 or layer == 4 or br_i in (0, 15) or sr_i == 3:
        return 0  # free-format streams are rare enough to leave to libsndfile
    mpeg1 = version == 3
    bitrate = _MPA_BITRATES[(mpeg1, layer)][br_i] * 1000
    rate = _MPA_RATES[version][sr_i]
    if layer == 1:
        return (12 * bitrate // rate + pad) * 4
    return (144 if (layer == 2 or mpeg1) else 72) * bitrate // rate + pad


def _adts_frame_len(h: bytes) -> int:
    if len(h) < 7 or h[0] != 0xFF or (h[1] & 0xF6) != 0xF0:
        return 0
    if ((h[2] >> 2) & 0xF) >= len(_ADTS_RATES):
        return 0
    n = ((h[3] & 3) << 11) | (h[4] << 3) | (h[5] >> 5)
    return n if n >= 7 else 0


def _chained(buf: bytes, frame_len) -> bool:
    """Two consecutive frame headers (the second where the first says), or one that fills the buffer."""
    n = frame_len(buf)
    if n == 0:
        return False
    if n + 7 > len(buf):
        return len(buf) >= 4 and n >= len(buf) // 2  # a big first frame: one valid header must do
    return frame_len(buf[n:]) > 0


def _text_kind(head: bytes) -> Sniff | None:
    s = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if s.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return Sniff("html", False, False, "an HTML page")
    if s.startswith(b"<?xml"):
        return Sniff("xml", False, False, "an XML document")
    if s.startswith((b"{", b"[")) and b"\x00" not in head:
        return Sniff("json", False, False, "a JSON/text document")
    if head and b"\x00" not in head:
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            # a multi-byte character cut by the block boundary is still text
            try:
                text = head[:-3].decode("utf-8")
            except UnicodeDecodeError:
                return None
        printable = sum(c.isprintable() or c in "\r\n\t" for c in text)
        if printable >= 0.95 * max(1, len(text)):
            return Sniff("text", False, False, "a text file")
    return None


def sniff_bytes(head: bytes) -> Sniff:
    """Classify content from its first bytes (``HEAD_BYTES`` are plenty); see :func:`sniff` for files."""
    h = head
    if len(h) < 4:
        return UNKNOWN
    four, at4 = h[:4], h[4:8]
    if four == b"RIFF" and h[8:12] == b"WAVE" or four in (b"RF64", b"BW64") and h[8:12] == b"WAVE":
        return Sniff("wav", True, True, "WAV")
    if four == b"RIFF" and h[8:12] == b"AVI ":
        return Sniff("avi", True, False, "AVI video")
    if h[:16] == _W64_GUID:
        return Sniff("w64", True, True, "Sony Wave64")
    if four == b"FORM" and h[8:12] in (b"AIFF", b"AIFC"):
        return Sniff("aiff", True, True, "AIFF")
    if four == b"FORM" and h[8:12] == b"8SVX":
        return Sniff("8svx", True, True, "IFF 8SVX")
    if four == b"FRM8":
        return Sniff("dff", True, True, "DSDIFF")
    if four == b".snd":
        return Sniff("au", True, True, "Sun AU")
    if four == b"fLaC":
        return Sniff("flac", True, True, "FLAC")
    if four == b"caff":
        return Sniff("caf", True, True, "Core Audio Format")
    if four == b"OggS":
        return _ogg_kind(h)
    if four == b"\x1a\x45\xdf\xa3":
        doctype = "WebM" if b"webm" in h[:64] else "Matroska"
        return Sniff("matroska", True, False, doctype)
    if h[:16] == _ASF_GUID:
        return Sniff("asf", True, False, "ASF (WMA/WMV)")
    if at4 in _ISO_BOXES:
        brand = h[8:12] if at4 == b"ftyp" else b""
        if brand in (b"M4P ",):
            return Sniff("mp4", True, True, "MP4 (brand 'M4P ', iTunes protected)")
        what = f"MP4 (brand {brand.decode('latin-1')!r})" if brand else "MP4/QuickTime"
        return Sniff("mp4", True, brand in _MP4_AUDIO_BRANDS, what)
    if h.startswith((b"#!AMR\n", b"#!AMR-WB\n", b"#!AMR_MC1.0\n", b"#!AMR-WB_MC1.0\n")):
        return Sniff("amr", True, True, "AMR")
    if four == b"MAC ":
        return Sniff("ape", True, True, "Monkey's Audio")
    if four == b"wvpk":
        return Sniff("wavpack", True, True, "WavPack")
    if four == b"TTA1":
        return Sniff("tta", True, True, "True Audio")
    if four == b"MPCK" or h[:3] == b"MP+":
        return Sniff("musepack", True, True, "Musepack")
    if four == b"DSD ":
        return Sniff("dsf", True, True, "DSF")
    if four in (b".RMF", b".ra\xfd"):
        return Sniff("realmedia", True, four == b".ra\xfd", "RealMedia")
    if h.startswith(b"Creative Voice File\x1a"):
        return Sniff("voc", True, True, "Creative Voice")
    if h[:3] == b"ID3":
        return Sniff("id3", True, True, "an ID3-tagged stream")
    if h[:2] == b"\x0b\x77":
        return Sniff("ac3", True, True, "AC-3")
    if four == b"\x7f\xfe\x80\x01":
        return Sniff("dts", True, True, "DTS")
    if _chained(h, _adts_frame_len):
        return Sniff("aac-adts", True, True, "AAC (ADTS)")
    if _chained(h, _mpa_frame_len):
        return Sniff("mp3", True, True, "MPEG audio")
    if four == b"MThd":
        return Sniff("midi", False, False, "MIDI (note data, not sampled audio)")
    for magic, kind, what in (
        (b"\xff\xd8\xff", "jpeg", "a JPEG image"),
        (b"\x89PNG", "png", "a PNG image"),
        (b"GIF8", "gif", "a GIF image"),
        (b"%PDF", "pdf", "a PDF document"),
        (b"PK\x03\x04", "zip", "a ZIP archive"),
        (b"\x1f\x8b", "gzip", "a gzip archive"),
        (b"\x00\x05\x16\x07", "appledouble", "AppleDouble metadata"),
    ):
        if h.startswith(magic):
            return Sniff(kind, False, False, what)
    return _text_kind(h) or UNKNOWN


def _ogg_kind(h: bytes) -> Sniff:
    # the first page holds the first logical stream's identification header right after the segment table
    nseg = h[26] if len(h) > 26 else 0
    body = h[27 + nseg : 27 + nseg + 16]
    for magic, kind, what, audio in (
        (b"OpusHead", "ogg-opus", "Ogg Opus", True),
        (b"\x01vorbis", "ogg-vorbis", "Ogg Vorbis", True),
        (b"\x7fFLAC", "ogg-flac", "Ogg FLAC", True),
        (b"Speex   ", "ogg-speex", "Ogg Speex", True),
        (b"\x80theora", "ogg-theora", "Ogg Theora video", False),
    ):
        if body.startswith(magic):
            return Sniff(kind, True, audio, what)
    return Sniff("ogg", True, True, "Ogg")


def _id3_size(h: bytes) -> int:
    """Bytes taken by the ID3v2 tag at the start of ``h`` (header + body + optional footer)."""
    size = (h[6] & 0x7F) << 21 | (h[7] & 0x7F) << 14 | (h[8] & 0x7F) << 7 | (h[9] & 0x7F)
    return 10 + size + (10 if h[5] & 0x10 else 0)


def sniff(path: str | os.PathLike) -> Sniff:
    """Classify the file at ``path`` from its head (one read; one more after an ID3v2 tag).

    An ID3v2 tag is skipped to name what follows it (MP3, AAC, FLAC). Unreadable files raise ``OSError``.
    """
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
        if len(head) >= 10 and head[:3] == b"ID3":
            fh.seek(_id3_size(head))
            after = fh.read(HEAD_BYTES)
            inner = sniff_bytes(after)
            if inner.kind in ("mp3", "aac-adts", "flac", "ac3", "dts"):
                return Sniff(inner.kind, True, True, f"{inner.what} with an ID3 tag")
            # a tag followed by unrecognised frames is still most likely MPEG audio: libsndfile decides
            return Sniff("id3", True, True, "an ID3-tagged stream")
    return sniff_bytes(head)
