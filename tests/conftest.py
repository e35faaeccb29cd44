import os
import threading
import sys
from pathlib import Path

# Qt aborts the whole pytest run when it has neither a platform nor a display.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _engine_cache(tmp_path_factory):
    """TensorRT engines built by tests go to a temporary cache, not ~/.cache."""
    os.environ["EDGE_ASSIST_ENGINE_CACHE"] = str(tmp_path_factory.mktemp("engine-cache"))


@pytest.fixture
def no_thread_leak():
    """Fails a test that leaves a thread running behind it."""
    before = set(threading.enumerate())
    yield
    import time

    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.02)
    pytest.fail(f"threads left behind: {[t.name for t in extra]}")


@pytest.fixture
def tiny_engines(tmp_path):
    from tiny_models import write_tiny_engines

    return write_tiny_engines(tmp_path / "engines")
