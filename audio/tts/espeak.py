"""Offline TTS with espeak-ng: the espeakng-loader wheel via ctypes, or Debian's binary."""

from __future__ import annotations

import ctypes
import io
import logging
import shutil
import subprocess
import threading
import wave
from pathlib import Path
from typing import Literal

from audio.exceptions import TtsError, TtsUnavailable
from audio.pcm import Pcm, concat
from audio.tts.abc import ProgressFn, TtsEngine

logger = logging.getLogger(__name__)

# espeak-ng's speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE = 1
_EE_OK = 0

# 175 wpm is espeak's default and sounds hurried outdoors, where horn echo from the next
# pole smears syllables; 150 wpm keeps Vietnamese tones distinct.
DEFAULT_WPM = 150

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _EspeakLibrary:
    """The process-wide libespeak-ng instance: the C library keeps global state, so it is
    initialized once and every call goes through one lock."""

    _instance: _EspeakLibrary | None = None
    _instance_lock = threading.Lock()

    def __init__(self, lib: ctypes.CDLL, rate: int, version: str) -> None:
        self.lib = lib
        self.rate = rate
        self.version = version
        self.lock = threading.Lock()
        self._chunks: list[bytes] = []
        # Keep a reference: ctypes callbacks are freed when garbage collected.
        self._callback = _SynthCallback(self._on_samples)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_samples(self, wav: ctypes._Pointer[ctypes.c_short], count: int, _events: int) -> int:
        if count > 0 and wav:
            self._chunks.append(ctypes.string_at(wav, count * 2))
        return 0  # 0 = continue synthesis

    @classmethod
    def get(cls) -> _EspeakLibrary:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls._load()
            return cls._instance

    @classmethod
    def _load(cls) -> _EspeakLibrary:
        try:
            import espeakng_loader

            lib_path = espeakng_loader.get_library_path()
            data_path = Path(espeakng_loader.get_data_path())
            lib = ctypes.CDLL(lib_path)
        except (ImportError, OSError, RuntimeError) as exc:
            raise TtsUnavailable(
                f"espeak-ng library not available ({exc}); pip install espeakng-loader "
                "or apt-get install espeak-ng"
            ) from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
        lib.espeak_Info.restype = ctypes.c_char_p
        # The path argument is the directory that contains espeak-ng-data.
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path.parent).encode(), 0
        )
        if rate <= 0:
            raise TtsUnavailable(
                f"espeak-ng failed to initialize with data at {data_path}; "
                "reinstall espeakng-loader"
            )
        version = (lib.espeak_Info(None) or b"unknown").decode()
        logger.info("espeak-ng %s loaded from %s (%d Hz)", version, lib_path, rate)
        return cls(lib, rate, version)

    def speak(self, text: str, voice: str, wpm: int) -> Pcm:
        with self.lock:
            if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise TtsUnavailable(
                    f"espeak-ng has no voice {voice!r}; reinstall espeakng-loader (it ships 'vi')"
                )
            self.lib.espeak_SetParameter(_PARAM_RATE, wpm, 0)
            self._chunks = []
            raw = text.encode("utf-8")
            err = self.lib.espeak_Synth(
                raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            self.lib.espeak_Synchronize()
            data = b"".join(self._chunks)
            self._chunks = []
        if err != _EE_OK:
            raise TtsError(f"espeak-ng failed to synthesize (error {err}) on text {text[:60]!r}")
        return Pcm(data=data, rate=self.rate)


class EspeakEngine(TtsEngine):
    """espeak-ng, Vietnamese voice by default. Works offline; the default engine.

    ``backend``: "library" (espeakng-loader wheel through ctypes), "binary" (the
    ``espeak-ng`` program, e.g. Debian's package) or "auto" (library, then binary).
    """

    name = "espeak-ng"

    def __init__(
        self,
        *,
        voice: str = "vi",
        wpm: int = DEFAULT_WPM,
        backend: Literal["auto", "library", "binary"] = "auto",
        binary: str | None = None,
    ) -> None:
        self.voice = voice
        self.wpm = wpm
        self.backend = backend
        self.binary = binary

    @property
    def identity(self) -> str:
        return f"espeak-ng:{self.voice}:{self.wpm}"

    def synthesize(
        self, text: str, *, speed: float = 1.0, progress: ProgressFn | None = None
    ) -> Pcm:
        if not text.strip():
            raise TtsError("nothing to speak: the text is empty")
        wpm = max(80, min(450, round(self.wpm * speed)))
        # Paragraph by paragraph so long bulletins report progress; espeak handles
        # sentence punctuation and pauses itself.
        paragraphs = [p for p in text.split("\n") if p.strip()]
        parts: list[Pcm] = []
        for index, paragraph in enumerate(paragraphs):
            parts.append(self._speak(paragraph, wpm))
            if progress is not None:
                progress((index + 1) / len(paragraphs))
        pcm = concat(parts)
        if pcm.frames == 0:
            raise TtsError(f"espeak-ng produced no audio for {text[:60]!r}")
        return pcm

    def _speak(self, text: str, wpm: int) -> Pcm:
        if self.backend in ("auto", "library"):
            try:
                return _EspeakLibrary.get().speak(text, self.voice, wpm)
            except TtsUnavailable:
                if self.backend == "library":
                    raise
                logger.info("espeak-ng library unavailable, trying the espeak-ng program")
        return self._speak_binary(text, wpm)

    def _speak_binary(self, text: str, wpm: int) -> Pcm:
        exe = self.binary or shutil.which("espeak-ng")
        if exe is None:
            raise TtsUnavailable(
                "espeak-ng not available: pip install espeakng-loader or apt-get install espeak-ng"
            )
        try:
            proc = subprocess.run(
                [exe, "-v", self.voice, "-s", str(wpm), "-b", "1", "--stdout"],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=60 + len(text) / 10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise TtsUnavailable(f"could not run {exe}: {exc}") from exc
        if proc.returncode != 0:
            raise TtsError(
                f"{exe} exited {proc.returncode}: {proc.stderr.decode('utf-8', 'replace')[-200:]}"
            )
        try:
            with wave.open(io.BytesIO(proc.stdout)) as wav:
                rate, width, channels = wav.getframerate(), wav.getsampwidth(), wav.getnchannels()
                # espeak-ng streams WAV with a placeholder length: read whatever is there.
                data = wav.readframes(1 << 30)
        except (wave.Error, EOFError) as exc:
            raise TtsError(f"{exe} printed no valid WAV: {exc}") from exc
        if width != 2 or channels != 1:
            raise TtsError(f"{exe} produced {channels} channel(s) of {width * 8}-bit audio")
        return Pcm(data=data, rate=rate)
