"""What plays: TTS engines, recordings, loudness, encoding, media cache."""
