"""Open the kit's three widgets in a real JupyterLab, in headless Chromium, and move their controls.

    python scripts/lab_widget_check.py [--shots DIR] [--chromium /usr/bin/chromium]

The pytest suite drives the widgets from Python (tests/test_widgets.py); this script checks what
it cannot: that the front end renders them and that a change made *in the browser* reaches the
kernel and comes back as new numbers and a new figure. It is a manual check, not part of
`make test`: it needs Chromium (Debian: `apt-get install chromium`) and Playwright
(`pip install playwright`, used with that Chromium, so nothing else is downloaded).

Steps: write a small notebook into a temporary folder (a 3-epoch dense VI net on 1,000 MNIST
images, then `pruning_explorer`, `criterion_explorer` and `ssvi_trainer`), start JupyterLab on it,
run all cells, then (a) pick another removal score and type a new density into the pruning
explorer, (b) switch the criterion explorer's score, (c) set the trainer's density and press
"train". Each step must change the widget's summary or figure; screenshots go to ``--shots``.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

CELLS = [
    """import ssvi_lite as sl
from ssvi_lite import widgets
sl.seed_everything(0)
cfg = sl.make_config("kit", method="vi", density=1.0, hidden=(100,), epochs=3, n_train=1000,
                     lr=3e-3, progress=False, n_eval_samples=2)
data = sl.load_dataset("mnist5k", seed=0, n_train=1000)
model = sl.run(cfg, data=data, with_ood=False).model""",
    "widgets.pruning_explorer(model, data, n_samples=2)",
    "widgets.criterion_explorer(n=41)",
    "widgets.ssvi_trainer(data, cfg.replace(epochs=1))",
]
SUMMARIES = ".widget-html-content"
FIGURES = ".jp-OutputArea-output img"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(page, shots: Path) -> None:
    from playwright.sync_api import expect

    def texts() -> list[str]:
        return page.locator(SUMMARIES).all_inner_texts()

    def figure(i: int) -> str | None:
        return page.locator(FIGURES).nth(i).get_attribute("src")

    def wait_until_changed(read, before, what: str) -> None:
        for _ in range(120):
            if read() != before:
                print(f"  {what}: changed")
                return
            time.sleep(0.5)
        raise AssertionError(f"{what} did not change within 60 s")

    page.wait_for_function("window.jupyterapp !== undefined", timeout=90_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    time.sleep(8)  # let the kernel start
    page.locator(".jp-Cell").first.click()
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    expect(page.locator(".widget-dropdown select")).to_have_count(3, timeout=180_000)
    # the pruner and the explorer draw at once; the trainer waits for its button
    expect(page.locator(FIGURES)).to_have_count(2, timeout=180_000)
    print(f"rendered: {page.locator('.widget-slider').count()} sliders, 3 dropdowns, "
          f"{page.locator('button.jupyter-button').count()} button(s), 2 figures")
    page.screenshot(path=str(shots / "1_rendered.png"), full_page=True)

    print("(a) pruning explorer:", texts()[0])
    before, fig = texts()[0], figure(0)
    page.locator(".widget-dropdown select").nth(0).select_option("random")
    wait_until_changed(lambda: texts()[0], before, "summary after choosing 'random'")
    wait_until_changed(lambda: figure(0), fig, "figure after choosing 'random'")
    before = texts()[0]
    readout = page.locator(".widget-readout").nth(0)  # the density slider's editable readout
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.30")
    page.keyboard.press("Enter")
    wait_until_changed(lambda: texts()[0], before, "summary after density 0.30")
    print("   now:", texts()[0])

    fig = figure(1)
    page.locator(".widget-dropdown select").nth(1).select_option("magnitude")
    print("(b) criterion explorer:")
    wait_until_changed(lambda: figure(1), fig, "score plane after choosing 'magnitude'")

    print("(c) SSVI trainer:")
    readout = page.locator(".widget-readout").nth(3)  # pruner, keep fraction, λ, trainer density
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("0.20")
    page.keyboard.press("Enter")
    page.locator("button.jupyter-button", has_text="train").click()
    page.wait_for_function(f"Array.from(document.querySelectorAll('{SUMMARIES}'))"
                           ".some(e => /test N/.test(e.innerText))", timeout=180_000)
    expect(page.locator(FIGURES)).to_have_count(3, timeout=60_000)
    trained = [t for t in texts() if "test N" in t][0]
    print("   ", trained)
    assert "density 0.2" in trained, trained
    page.screenshot(path=str(shots / "2_after_interaction.png"), full_page=True)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    assert errors.count() == 0, errors.all_inner_texts()
    print("all three widgets rendered and responded; screenshots in", shots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", default="lab_widget_check", help="folder for the screenshots")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    shots = Path(args.shots)
    shots.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                           "language": "python"}
        nbformat.write(notebook, Path(folder) / "widgets_check.ipynb")
        port = free_port()
        lab = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
             "--IdentityProvider.token=", "--LabApp.expose_app_in_browser=True",
             f"--ServerApp.root_dir={folder}", "--allow-root"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(8)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 2400})
                page.goto(f"http://127.0.0.1:{port}/lab/tree/widgets_check.ipynb")
                try:
                    check(page, shots)
                finally:
                    browser.close()
        finally:
            lab.terminate()
            lab.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
