"""Where things are, for tests in any folder: the repository, the fake DeepSC, the golden files."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
#: A stand-in for DeepSC's fine-tuner that prints what DeepSC prints (tests/fake_deepsc.py).
FAKE_DEEPSC = TESTS / "fake_deepsc.py"
#: Recorded outputs the tests compare with: DeepSC's real stdout, the CLI's interface.
GOLDEN = TESTS / "golden"
