"""The run report renders in a real browser: a run over real HH-RLHF pairs with every cheap
stage (generation against the OpenAI-compatible HTTP stub, two labelers, four filters) writes
``report.html``; headless Chromium screenshots it and dumps its DOM.

The report is under test, not the models: the labelers are the transparent length heuristics
of tests/stages/filter/test_stage.py, and the diversity embedder is a transparent hashed bag of words
(MiniLM's own behaviour is tested in tests/models/test_transformers_backend.py; loading it would double
this file's time). Generation is real HTTP against the stub server. The generator's API key is
planted in the environment and the stub insists on it, so the run really used it; it must
appear in no output.

Needs Debian's ``chromium`` (``bash install.sh`` installs it when run as root; otherwise
``sudo apt-get install chromium``; ``CURATE_CHROMIUM`` names another Chromium or Chrome binary);
without it the browser checks skip and say so.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import curation.models as model_registry
import curation.stages.label as label_registry
from curate.cli import app
from curation.models.base import ModelBackend
from curation.report.html import funnel_steps
from curation.run.runner import RunResult, curate
from tests.helpers import recipe_config
from tests.stages.filter.test_stage import LABEL, LENGTH
from tests.support.openai_stub import OpenAIStub

CHROMIUM = "/usr/bin/chromium"
KEY_ENV, KEY = "CURATE_REPORT_TEST_KEY", "sk-planted-3f9c1d7e-report-test"
STEPS = [
    {"kind": "voting", "labelers": ["len-chars", "len-words"], "rule": "threshold", "flip_below": -1.0, "ambiguous_within": 0.05},
    {"kind": "margin", "labelers": ["len-chars"], "min_margin": -20.0},
    {"kind": "near_dedup", "level": "prompt", "threshold": 0.8},
    {"kind": "route", "budget": 8, "include_human": True},
]

HASHED = "tests.report.test_html:HashedWords"


class HashedWords(ModelBackend):
    """Embeddings as hashed word counts, L2-normalised: texts sharing words are close."""

    name = "hashed_words"
    dim = 256

    def __init__(self, cfg: Any, data_root: Path) -> None:
        self.model = cfg.model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[i, zlib.crc32(word.encode()) % self.dim] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, hh_path: Path) -> Iterator[RunResult]:
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp, OpenAIStub(api_key=KEY) as stub:
        mp.setitem(label_registry.LABELERS, "reward_model", LENGTH)
        mp.setitem(model_registry.BACKENDS, "sentence_transformers", HASHED)  # the embedder's slot, as the labelers'
        mp.setenv(KEY_ENV, KEY)
        generate = {
            "generator": {"backend": "openai", "model": "stub-model", "base_url": stub.base_url, "api_key_env": KEY_ENV},
            "embedder": {"backend": "sentence_transformers", "model": "hashed-words-256"},
            "prompts": {"from": "pairs", "limit": 6},
            "n": 3,
            "max_tokens": 16,
            "strategy": "persona",
            "compare": ["iid"],
        }
        source = [{"name": "hh", "path": str(hh_path), "adapter": "hh_rlhf", "limit": 120}]
        cfg = recipe_config(tmp, source, dataset="report-demo", generate=generate, label=LABEL, filter={"steps": STEPS})
        yield curate(cfg)


@pytest.fixture(scope="module")
def report(run: RunResult) -> Path:
    return Path(run.report_dir) / "report.html"


@pytest.fixture(scope="module")
def summary(run: RunResult) -> dict:
    return json.loads((Path(run.report_dir) / "summary.json").read_text())


def chromium() -> str | None:
    """Debian's chromium, or the browser named by $CURATE_CHROMIUM (e.g. a Chrome binary)."""
    configured = os.environ.get("CURATE_CHROMIUM")
    if configured:
        return shutil.which(configured)
    return shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)


@pytest.fixture(scope="module")
def rendered(report: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(screenshot, dumped DOM) from headless Chromium, both started at once."""
    exe = chromium()
    if exe is None:
        pytest.skip("chromium is not installed: run `bash install.sh` as root, or `sudo apt-get install chromium` (Debian package)")
    tmp = tmp_path_factory.mktemp("chromium")
    png = tmp / "report.png"

    def browser(profile: str, *args: str) -> subprocess.Popen:
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / profile}",
        ]
        return subprocess.Popen([exe, *flags, *args, report.as_uri()], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    shot = browser("shot", f"--screenshot={png}", "--window-size=1280,4000", "--hide-scrollbars")
    dump = browser("dom", "--dump-dom")
    dom, dom_err = dump.communicate(timeout=120)
    _, shot_err = shot.communicate(timeout=120)
    assert dump.returncode == 0 and dom.strip(), f"chromium --dump-dom failed ({dump.returncode}): {dom_err[-2000:]}"
    assert shot.returncode == 0 and png.exists(), f"chromium --screenshot failed ({shot.returncode}): {shot_err[-2000:]}"
    return png, dom


def test_report_has_a_section_for_every_stage_that_ran(report: Path, summary: dict) -> None:
    page = report.read_text()
    f = summary["funnel"]
    assert {"generated", "labels", "filter"} <= f.keys()
    # title, provenance and the table of contents
    assert f"<h1>{summary['dataset']}@{summary['version']}</h1>" in page
    for key in ("config_hash", "code_version", "created_at"):
        assert html.escape(str(summary[key])) in page
    toc = re.search(r'<nav class="toc">(.*?)</nav>', page, re.S).group(1)
    anchors = re.findall(r'href="#([\w-]+)"', toc)
    assert anchors == ["funnel", "timings", "reasons", "generation", "labels", "agreement", "filters", "lengths", "sources", "inputs"]
    assert all(f'<section id="{a}">' in page for a in anchors)
    # every stage that ran has its timing row
    for stage, seconds in summary["timings_s"].items():
        assert f"<td>{stage}</td><td class='num'>{seconds:,.2f}</td>" in page
    # the figures: funnel, diversity per strategy, margins, calibration, filter steps, score histograms, routing
    alts = re.findall(r'<img alt="([^"]+)"', page)
    assert alts == [
        "funnel",
        "generation diversity",
        "label margin histograms",
        "calibration",
        "filter steps",
        "filter score histograms",
        "routing curve",
        "length ratio histograms",
    ]
    # generation: each strategy's diversity against i.i.d.
    g = f["generated"]
    assert set(g["diversity"]) == {"persona", "iid"}
    persona, iid = g["diversity"]["persona"], g["diversity"]["iid"]
    assert (
        f"persona vs i.i.d.: mean pairwise cosine distance {persona['mean_cosine_distance']:.3f} vs {iid['mean_cosine_distance']:.3f}"
        in page
    )


def test_label_agreement_tables_match_the_published_labels(run: RunResult, summary: dict, report: Path) -> None:
    from curation.store.query import sql

    labels = summary["funnel"]["labels"]
    (pw,) = labels["pairwise"]
    assert (pw["a"], pw["b"]) == ("len-chars", "len-words")
    root = Path(run.report_dir).parents[3]
    both = sql(
        "SELECT count(*) AS n, count(*) FILTER (WHERE c.verdict = w.verdict) AS agree, count(*) FILTER (WHERE c.verdict = 'A') AS ca, "
        "count(*) FILTER (WHERE w.verdict = 'A') AS wa FROM labels c JOIN labels w USING (pair_id) "
        "WHERE c.labeler = 'len-chars' AND w.labeler = 'len-words' AND c.verdict IN ('A','B') AND w.verdict IN ('A','B')",
        root,
        dataset=summary["dataset"],
    ).to_dicts()[0]
    assert (pw["n"], pw["agree"]) == (both["n"], both["agree"]) and pw["n"] > 100
    pc, pw_ = both["ca"] / both["n"], both["wa"] / both["n"]
    chance = pc * pw_ + (1 - pc) * (1 - pw_)
    assert pw["kappa"] == pytest.approx((both["agree"] / both["n"] - chance) / (1 - chance))
    assert sum(labels["margins"]["len-chars"]["counts"]) == labels["labelers"]["len-chars"]["rows"]
    page = report.read_text()
    assert f"{100 * pw['rate']:.0f}%<br><small>n={pw['n']:,}</small>" in page
    for row in labels["agreement"]:  # labelers vs human
        decided = f"<td>{row['n_decided']}</td><td>{row['n_tie']}</td><td>{row['n_invalid']}</td>"
        head = f"<td>{row['labeler']}</td><td>{row['kind']}</td><td>{row['n']}</td>{decided}<td>{100 * row['accuracy']:.1f}%</td>"
        assert head in page
        assert f"<td>{100 * row['length_accuracy']:.1f}%</td>" in page  # the length baseline beside it


def test_every_text_from_the_summary_is_escaped(summary: dict) -> None:
    from curation.report.html import funnel_png, render_html

    evil = "<script>alert(1)</script>"
    hostile = json.loads(json.dumps(summary))
    del hostile["funnel"]["generated"], hostile["funnel"]["filter"]  # fewer figures to draw; their text is escaped alike
    hostile["run_id"] = evil
    hostile["funnel"]["quarantined_by_error"]["validate"] = {evil: 3}
    hostile["funnel"]["labels"]["labelers"][evil] = hostile["funnel"]["labels"]["labelers"]["len-chars"]
    hostile["funnel"]["labels"]["pairwise"][0]["a"] = evil
    hostile["inputs"][0]["path"] = "s3://user:secret@bucket/in.jsonl?X-Amz-Signature=abc"
    page = render_html(hostile, funnel_png(hostile["funnel"]))
    assert "<script" not in page and page.count(html.escape(evil)) >= 4
    assert "secret" not in page and "X-Amz-Signature" not in page and "s3://bucket/in.jsonl" in page


def test_planted_api_key_is_in_no_output(run: RunResult) -> None:
    """Report, summary, run folder, catalog, tables and the request cache: everything the run wrote."""
    root = Path(run.report_dir).parents[3]
    outputs = [p for p in root.rglob("*") if p.is_file()]
    assert {"report.html", "summary.json", "requests.sqlite"} <= {p.name for p in outputs}
    for path in outputs:
        assert KEY.encode() not in path.read_bytes(), path


def test_chromium_renders_the_report_with_its_numbers_and_nothing_external(rendered: tuple[Path, str], summary: dict) -> None:
    import matplotlib.image as mpimg

    png, dom = rendered
    pixels = (mpimg.imread(png)[..., :3] * 255).astype(np.uint32)
    assert pixels.shape[0] >= 3000 and pixels.shape[1] >= 1200
    colours = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2])
    assert pixels.std() > 10 and len(colours) > 50, "the screenshot is (nearly) blank"
    # the page is drawn, not just the white background: the top band holds the title text
    assert pixels[:200].std() > 5
    text = re.sub(r"<[^>]+>", " ", dom)
    for label, count in funnel_steps(summary["funnel"]):
        assert f"{abs(count):,}" in text, label
    imgs = re.findall(r"<img\b[^>]*>", dom)
    assert len(imgs) == 8 and all(re.search(r'src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', i) for i in imgs)
    assert not re.search(r"https?://", dom), "the report links outside itself"
    assert "<link" not in dom and "<script" not in dom


def test_curate_report_prints_the_path_and_explains_unknown_names(run: RunResult, summary: dict) -> None:
    runner = CliRunner()
    root = str(Path(run.report_dir).parents[3])
    ref = f"{summary['dataset']}@{summary['version']}"
    ok = runner.invoke(app, ["report", ref, "--data-root", root, "--no-open"])
    assert ok.exit_code == 0, ok.output
    assert ok.output.strip() == str(Path(run.report_dir, "report.html").resolve())
    latest = runner.invoke(app, ["report", summary["dataset"], "--data-root", root])
    assert latest.exit_code == 0 and latest.output.splitlines()[0] == ok.output.strip()
    # a report deleted by hand: a clear error, then --rebuild writes the same report again
    page = Path(ok.output.strip())
    before = page.read_bytes()
    page.unlink()
    gone = runner.invoke(app, ["report", ref, "--data-root", root, "--no-open"])
    assert gone.exit_code == 2 and "--rebuild" in gone.output
    again = runner.invoke(app, ["report", ref, "--data-root", root, "--no-open", "--rebuild"])
    assert again.exit_code == 0 and page.read_bytes() == before
    for bad, message in [("nope", "nope"), (f"{summary['dataset']}@9", "9"), (f"{summary['dataset']}@x", "NAME@VERSION")]:
        res = runner.invoke(app, ["report", bad, "--data-root", root, "--no-open"])
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_the_query_in_the_report_runs_as_printed(run: RunResult, summary: dict, report: Path) -> None:
    """The "Query it" line, pasted into a shell, works for a dataset name with a "-" in it."""
    import shlex

    assert "-" in summary["dataset"]
    hint = re.search(r"<code>curate sql (.*?)</code>", report.read_text())
    assert hint is not None
    root = str(Path(run.report_dir).parents[3])
    res = CliRunner().invoke(app, ["sql", *shlex.split(html.unescape(hint.group(1))), "--data-root", root])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("shape: (5, ")
