"""The demo's stage runner: skips what finished, starts over what is stale, resumes what was cut."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.demo import Stages


def touch(path: Path, text: str) -> list[str]:
    """A command that appends ``text`` to ``path`` (so a test can count the runs)."""
    return [sys.executable, "-c", f"open({str(path)!r}, 'a').write({text!r})"]


def test_skips_finished_stages_and_reruns_stale_ones(tmp_path):
    out = tmp_path / "demo"
    a_out, b_out = out / "a", out / "b"
    a_out.mkdir(parents=True)
    b_out.mkdir(parents=True)
    log = tmp_path / "log.txt"

    def run_all(b_setting: str) -> None:
        st = Stages(out)
        st.run("a", [touch(log, "a")], outputs=(a_out,))
        (b_out / "partial").write_text("from the last run")
        st.run("b", [touch(log, "b")], outputs=(b_out,), inputs={"setting": b_setting})
        st.run("c", [touch(log, "c")])

    run_all("x")
    assert log.read_text() == "abc"
    run_all("x")  # everything finished with the same settings: nothing runs
    assert log.read_text() == "abc"
    run_all("y")  # b's settings changed: b starts over (its old outputs removed), and c after it
    assert log.read_text() == "abcbc"
    assert not (b_out / "partial").exists() and a_out.exists()
    (out / "stages" / "c.done").unlink()  # c was cut short: it runs again, keeping its outputs
    st = Stages(out)
    st.run("a", [touch(log, "a")], outputs=(a_out,))
    st.run("b", [touch(log, "b")], outputs=(b_out,), inputs={"setting": "y"})
    st.run("c", [touch(log, "c")])
    assert log.read_text() == "abcbcc"


def test_inputs_compare_as_stored(tmp_path):
    """A tuple in a stage's inputs comes back from the marker's JSON as a list: still the same."""
    log = tmp_path / "log.txt"
    for _ in range(2):
        Stages(tmp_path / "demo").run("a", [touch(log, "a")], inputs={"chunk": (8, 4)})
    assert log.read_text() == "a"


def test_a_stage_finished_under_another_schema_runs_again(tmp_path):
    """Data written under another schema version (other episode ids) is never reused."""
    import json

    log, out = tmp_path / "log.txt", tmp_path / "demo"
    Stages(out).run("a", [touch(log, "a")])
    marker = out / "stages" / "a.done"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "schema": "1.0"}))
    Stages(out).run("a", [touch(log, "a")])
    assert log.read_text() == "aa"
    Stages(out).run("a", [touch(log, "a")])  # finished under this schema now: skipped
    assert log.read_text() == "aa"


def waits_for(mine: Path, other: Path) -> list[str]:
    """A command that creates ``mine`` and exits 0 once ``other`` exists, 1 after 60 s without it:
    two of them both succeed only when they run at the same time."""
    code = (
        "import pathlib, sys, time\n"
        f"pathlib.Path({str(mine)!r}).touch()\n"
        "end = time.time() + 60\n"
        f"while not pathlib.Path({str(other)!r}).exists():\n"
        "    if time.time() > end: sys.exit(1)\n"
        "    time.sleep(0.05)\n"
    )
    return [sys.executable, "-c", code]


def test_independent_stages_run_at_the_same_time(tmp_path):
    """The demo's two fine-tunes: both at once, each with its own marker; a rerun skips both."""
    from pipelines.demo import Stage

    out, a, b = tmp_path / "demo", tmp_path / "a", tmp_path / "b"
    Stages(out).run_together([Stage("a", [waits_for(a, b)]), Stage("b", [waits_for(b, a)])])
    assert (out / "stages" / "a.done").exists() and (out / "stages" / "b.done").exists()
    log = tmp_path / "log.txt"
    st = Stages(out)
    st.run_together([Stage("a", [waits_for(a, b)]), Stage("b", [waits_for(b, a)])])
    st.run("c", [touch(log, "c")])
    assert set(st.times) == {"a", "b", "c"} and log.read_text() == "c"


def test_a_failed_stage_of_a_group_keeps_the_others_work(tmp_path):
    import pytest

    from pipelines.demo import Stage
    from pipelines.usage import JobFailed

    out, log = tmp_path / "demo", tmp_path / "log.txt"
    fail = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(JobFailed, match="stage bad failed \\(exit 3\\)"):
        Stages(out).run_together([Stage("good", [touch(log, "g")]), Stage("bad", [fail])])
    assert (out / "stages" / "good.done").exists() and not (out / "stages" / "bad.done").exists()
    Stages(out).run_together([Stage("good", [touch(log, "g")]), Stage("bad", [touch(log, "b")])])
    assert log.read_text() == "gb"  # the finished one is skipped on the rerun
