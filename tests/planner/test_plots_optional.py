"""matplotlib is only for plots (the ``plots`` extra): the controller's run path never imports it,
and the simulator runs without it when asked for no plots, or says what to install."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEED_CONFIG = ROOT / "examples" / "sd21-seed.yaml"

# A process in which `import matplotlib` fails, as where the plots extra is not installed.
WITHOUT_MATPLOTLIB = "import sys; sys.modules['matplotlib'] = None; "


def python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_the_controller_run_path_does_not_import_matplotlib():
    code = ("import sys, controller.__main__, controller.loop, controller.config, controller.traces; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))")
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_simulate_without_matplotlib_runs_with_no_plots(tmp_path):
    trace = tmp_path / "t.csv"
    python("from controller.traces import main; import sys; sys.exit(main(sys.argv[1:]))",
           "diurnal", "--hours", "1", "--step", "60", "--out", str(trace)).check_returncode()
    code = WITHOUT_MATPLOTLIB + "from controller.simulate import main; sys.exit(main(sys.argv[1:]))"
    args = ["--config", str(SEED_CONFIG), "--trace", str(trace), "--policies", "static"]
    done = python(code, *args, "--out", str(tmp_path / "a"), "--no-plots")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "a" / "summary.json").exists()

    done = python(code, *args, "--out", str(tmp_path / "b"))
    assert done.returncode == 2
    assert "plots need matplotlib" in done.stderr and "--no-plots" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "b").exists()  # refused before running anything
