"""Online TTS through gTTS (Google Translate's unofficial speech endpoint).

gTTS builds the request bodies (its 100-character tokenizer and RPC packaging); this
module sends them itself so it controls what gTTS leaves open: an explicit timeout, retry
with capped exponential backoff on HTTP 429/5xx, and the endpoint URL (a seam for tests
and for sites that must go through a mirror). Text is split at Vietnamese sentence
punctuation first and each sentence rendered on its own, so a pause of known length falls
exactly between sentences instead of wherever Google's 100-character cut lands.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Iterator

import requests
from gtts import gTTS
from gtts.tokenizer import pre_processors

from audio.exceptions import FfmpegFailed, TtsError, TtsUnavailable
from audio.ffmpeg import change_tempo, decode_bytes
from audio.normalize import split_sentences
from audio.pcm import Pcm, concat, trim_silence
from audio.tts.abc import ProgressFn, TtsEngine

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://translate.google.com/_/TranslateWebserverUi/data/batchexecute"
_AUDIO_RE = re.compile(r'jQ1olc","\[\\"(.*?)\\"]')
# Google's MP3 is 24 kHz mono; decode at that rate so nothing is resampled twice.
_GTTS_RATE = 24000


def backoff_delays(retries: int, base_s: float, cap_s: float) -> Iterator[float]:
    """Exponential backoff with a cap: base, 2*base, 4*base ... (``retries`` values)."""
    for attempt in range(retries):
        yield min(cap_s, base_s * (2**attempt))


class GttsEngine(TtsEngine):
    """Google TTS, Vietnamese by default. Needs the internet; can be rate limited."""

    name = "gtts"

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        lang: str = "vi",
        timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        backoff_cap_s: float = 16.0,
        sentence_pause_s: float = 0.35,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.endpoint = endpoint
        self.lang = lang
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.sentence_pause_s = sentence_pause_s
        self._sleep = sleep

    @property
    def identity(self) -> str:
        return f"gtts:{self.lang}:{self.sentence_pause_s}"

    def synthesize(
        self, text: str, *, speed: float = 1.0, progress: ProgressFn | None = None
    ) -> Pcm:
        sentences = split_sentences(text)
        if not sentences:
            raise TtsError("nothing to speak: the text is empty")
        pause = Pcm.silence(self.sentence_pause_s, _GTTS_RATE)
        parts: list[Pcm] = []
        with requests.Session() as session:
            for index, sentence in enumerate(sentences):
                mp3 = b"".join(self._fetch(session, body) for body in self._bodies(sentence))
                try:
                    pcm = decode_bytes(mp3, "mp3", _GTTS_RATE, what="decoding Google TTS audio")
                except FfmpegFailed as exc:
                    raise TtsError(
                        f"Google TTS sent audio that does not decode ({exc}); the unofficial "
                        "API may have changed: use engine='offline' and update gTTS"
                    ) from exc
                # Google pads each clip with its own silence; trim it so pauses are ours.
                pcm = trim_silence(pcm, -50.0, keep_s=0.05)
                if parts:
                    parts.append(pause)
                parts.append(pcm)
                if progress is not None:
                    progress((index + 1) / len(sentences))
        out = concat(parts)
        if out.frames == 0:
            raise TtsError("Google TTS returned only silence")
        if speed != 1.0:
            out = change_tempo(out, speed)
        return out

    def _bodies(self, sentence: str) -> list[str]:
        tts = gTTS(
            sentence,
            lang=self.lang,
            lang_check=False,  # the language check would itself go online
            # gTTS's other pre-processors fix English abbreviations; ours ran already.
            pre_processor_funcs=[pre_processors.tone_marks, pre_processors.end_of_line],
            timeout=self.timeout_s,
        )
        try:
            bodies = tts.get_bodies()
        except AssertionError as exc:  # gTTS asserts when nothing is left to speak
            raise TtsError(f"gTTS found nothing to speak in {sentence!r}") from exc
        return [str(b) for b in bodies]

    def _fetch(self, session: requests.Session, body: str) -> bytes:
        delays = backoff_delays(self.retries, self.backoff_s, self.backoff_cap_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = session.post(
                    self.endpoint,
                    data=body,
                    headers=gTTS.GOOGLE_TTS_HEADERS,
                    timeout=self.timeout_s,
                )
            except requests.Timeout as exc:
                # Not retried: a hung endpoint would multiply the wait, and auto mode
                # wants to fall back to offline TTS quickly.
                raise TtsUnavailable(
                    f"Google TTS did not answer within {self.timeout_s:g} s; check the "
                    "internet connection or use engine='offline'"
                ) from exc
            except requests.RequestException as exc:
                raise TtsUnavailable(
                    f"cannot reach Google TTS ({exc.__class__.__name__}); check the internet "
                    "connection or use engine='offline'"
                ) from exc
            status = response.status_code
            if status == 429 or status >= 500:
                delay = next(delays, None)
                if delay is None:
                    raise TtsUnavailable(
                        f"Google TTS refused the request (HTTP {status}) {attempt} time(s); "
                        "try again later or use engine='offline'"
                    )
                delay = max(delay, min(self.backoff_cap_s, _retry_after(response)))
                logger.warning("Google TTS HTTP %d, retrying in %.2f s", status, delay)
                self._sleep(delay)
                continue
            if status != 200:
                raise TtsError(
                    f"Google TTS answered HTTP {status}; the unofficial API may have changed: "
                    "use engine='offline' and update gTTS"
                )
            return _extract_audio(response.text)


def _retry_after(response: requests.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "0")))
    except ValueError:
        return 0.0


def _extract_audio(payload: str) -> bytes:
    chunks = []
    for line in payload.splitlines():
        if "jQ1olc" not in line:
            continue
        match = _AUDIO_RE.search(line)
        if match is None:
            continue
        try:
            chunks.append(base64.b64decode(match.group(1), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise TtsError(f"Google TTS sent malformed audio data ({exc})") from exc
    if not chunks or not any(chunks):
        raise TtsError(
            "Google TTS answered without audio; the unofficial API may have changed: "
            "use engine='offline' and update gTTS"
        )
    return b"".join(chunks)
