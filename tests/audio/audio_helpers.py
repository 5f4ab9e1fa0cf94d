"""Helpers for the audio suite (a uniquely named module: tests/ has no packages)."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import urllib.parse
import wave
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from audio.pcm import Pcm
from audio.tts.espeak import EspeakEngine

HANG_LIMIT_S = 10.0


def speech_pcm(text: str = "Xin chào bà con. Đây là bản tin thử nghiệm của xã.") -> Pcm:
    return EspeakEngine().synthesize(text)


def write_wav(path: Path, pcm: Pcm) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(pcm.rate)
        wav.writeframes(pcm.data)
    return path


def mp3_bytes(ffmpeg: str, pcm: Pcm) -> bytes:
    """Encode like Google does: 24 kHz mono 32 kbps MP3."""
    proc = subprocess.run(
        [
            ffmpeg,
            "-hide_banner",
            "-v",
            "error",
            "-f",
            "s16le",
            "-ar",
            str(pcm.rate),
            "-ac",
            "1",
            "-i",
            "pipe:0",
            "-ar",
            "24000",
            "-c:a",
            "libmp3lame",
            "-b:a",
            "32k",
            "-f",
            "mp3",
            "pipe:1",
        ],
        input=pcm.data,
        capture_output=True,
        timeout=30,
        check=True,
    )
    return proc.stdout


class FakeGoogleTts:
    """A real HTTP server on 127.0.0.1 speaking the batchexecute protocol gTTS uses.

    ``script`` lists how to answer the next requests ("audio", "429", "500", "hang",
    "garbage", "bad_audio"); when it is empty every request gets "audio" (speech
    rendered with espeak-ng and encoded to MP3, like Google's).
    """

    def __init__(self, ffmpeg: str) -> None:
        self.ffmpeg = ffmpeg
        self.script: list[str] = []
        self.texts: list[str] = []
        self.langs: list[str] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                text, lang = fake._parse(body)
                with fake._lock:
                    fake.texts.append(text)
                    fake.langs.append(lang)
                    mode = fake.script.pop(0) if fake.script else "audio"
                fake._answer(self, mode, text)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/_/TranslateWebserverUi/data/batchexecute"

    @staticmethod
    def _parse(body: str) -> tuple[str, str]:
        form = urllib.parse.parse_qs(body)
        rpc = json.loads(form["f.req"][0])
        text, lang, *_ = json.loads(rpc[0][0][1])
        return text, lang

    def _answer(self, handler: BaseHTTPRequestHandler, mode: str, text: str) -> None:
        if mode == "hang":
            # Accept the request, never answer (bounded so teardown cannot hang).
            self.release.wait(HANG_LIMIT_S)
            return
        if mode in ("429", "500"):
            payload = b"<html>Error</html>"
            handler.send_response(int(mode))
            handler.send_header("Content-Type", "text/html")
            if mode == "429":
                handler.send_header("Retry-After", "0")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
            return
        if mode == "garbage":
            payload = b"<html><body>Our systems have detected unusual traffic</body></html>"
        else:
            audio = (
                b"ID3 this is not mpeg audio" * 20
                if mode == "bad_audio"
                else (mp3_bytes(self.ffmpeg, speech_pcm(text)))
            )
            compact = (",", ":")  # Google's own encoding: no spaces
            inner = json.dumps([base64.b64encode(audio).decode()], separators=compact)
            envelope = json.dumps(
                [["wrb.fr", "jQ1olc", inner, None, None, None, "generic"], ["di", 52]],
                separators=compact,
            )
            payload = f')]}}\'\n\n{len(envelope)}\n{envelope}\n25\n[["e",4,null,null,1]]\n'.encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json; charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
