"""Raw audio in memory: mono signed 16-bit little-endian PCM plus its sample rate."""

from __future__ import annotations

from dataclasses import dataclass

from audio._pydub import AudioSegment, detect_leading_silence

SAMPLE_WIDTH = 2


@dataclass(frozen=True)
class Pcm:
    """Mono s16le samples at ``rate`` Hz."""

    data: bytes
    rate: int

    @property
    def frames(self) -> int:
        return len(self.data) // SAMPLE_WIDTH

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate

    def segment(self) -> AudioSegment:
        """This audio as a pydub segment (no copy of ffmpeg involved)."""
        return AudioSegment(
            data=self.data, sample_width=SAMPLE_WIDTH, frame_rate=self.rate, channels=1
        )

    @classmethod
    def from_segment(cls, seg: AudioSegment) -> Pcm:
        seg = seg.set_channels(1).set_sample_width(SAMPLE_WIDTH)
        return cls(data=seg.raw_data, rate=seg.frame_rate)

    @classmethod
    def silence(cls, seconds: float, rate: int) -> Pcm:
        return cls(data=b"\x00\x00" * round(seconds * rate), rate=rate)


def concat(parts: list[Pcm]) -> Pcm:
    """Join parts that share one sample rate."""
    if not parts:
        raise ValueError("nothing to concatenate")
    rate = parts[0].rate
    if any(p.rate != rate for p in parts):
        raise ValueError("cannot concatenate PCM with different sample rates")
    return Pcm(data=b"".join(p.data for p in parts), rate=rate)


def peak_dbfs(pcm: Pcm) -> float:
    """Highest sample level in dBFS (-inf for digital silence)."""
    if not pcm.data:
        return float("-inf")
    return float(pcm.segment().max_dBFS)


def trim_silence(pcm: Pcm, threshold_db: float, *, keep_s: float = 0.1) -> Pcm:
    """Cut leading and trailing audio quieter than ``threshold_db``.

    ``keep_s`` of the silence is kept on each side so soft consonant onsets and
    decays are not clipped. Returns empty PCM when everything is below the threshold.
    """
    seg = pcm.segment()
    # 10 ms chunks: fine enough not to cut a syllable, coarse enough to ignore clicks.
    lead_ms = detect_leading_silence(seg, silence_threshold=threshold_db, chunk_size=10)
    if lead_ms >= len(seg):
        return Pcm(data=b"", rate=pcm.rate)
    trail_ms = detect_leading_silence(seg.reverse(), silence_threshold=threshold_db, chunk_size=10)
    keep_ms = int(keep_s * 1000)
    start = max(0, lead_ms - keep_ms)
    end = min(len(seg), len(seg) - trail_ms + keep_ms)
    return Pcm.from_segment(seg[start:end])


def apply_gain(pcm: Pcm, db: float) -> Pcm:
    return Pcm.from_segment(pcm.segment().apply_gain(db))
