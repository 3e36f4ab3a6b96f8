"""The documentation builds strictly (every code reference resolves, every image exists), its
generated pages come from the project itself, and its math is typeset by the KaTeX it ships."""

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KATEX = ROOT / "docs" / "javascripts" / "katex"
MATH = re.compile(r'<(?P<tag>span|div) class="arithmatex">(?P<tex>.*?)</(?P=tag)>', re.DOTALL)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built once by `mkdocs build --strict`, shared by the tests that read its pages."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("pymdownx.arithmatex")
    site_dir = tmp_path_factory.mktemp("docs") / "site"
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site_dir)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return site_dir


def test_docs_build_strictly(site):
    cli_page = (site / "cli" / "index.html").read_text()
    assert "vaekit train" in cli_page and "--importance-samples" in cli_page  # from the parser
    api_page = (site / "api" / "distances" / "index.html").read_text()
    assert "chamfer_distance" in api_page and "earth_movers_distance" in api_page
    assert (site / "architecture" / "index.html").is_file()


def test_vae_guide_holds_math_that_the_shipped_katex_typesets(site):
    page_path = site / "guides" / "vae" / "index.html"
    page = page_path.read_text()
    maths = [(m["tag"], html.unescape(m["tex"])) for m in MATH.finditer(page)]
    # the IWAE bound as displayed TeX, and inline TeX in the prose
    iwae_bound = r"\mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^{K} w_k ."
    assert ("div", "\\[\n" + iwae_bound + "\n\\]") in maths
    assert ("span", r"\(q(z \mid x)\)") in maths
    # KaTeX and its stylesheet: relative paths that exist in the built site, no CDN
    scripts = ("katex/katex.min.js", "katex-init.js", "katex/katex.min.css")
    for reference in (f"javascripts/{name}" for name in scripts):
        match = re.search(r'(?:src|href)="(?P<path>[./]*' + re.escape(reference) + ')"', page)
        assert match, f"{reference} is not referenced by {page_path.name}"
        assert (page_path.parent / match["path"]).resolve().is_file()
    assert not re.search(r'(?:src|href)="(?:https?:)?//[^"]*katex', page, re.IGNORECASE)
    # every font the stylesheet names ships with it
    stylesheet = site / "javascripts" / "katex" / "katex.min.css"
    fonts = set(re.findall(r"url\((fonts/[^)]+)\)", stylesheet.read_text()))
    assert fonts and all((stylesheet.parent / font).is_file() for font in fonts)


def test_every_formula_parses_with_the_shipped_katex(site):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    formulas = [
        (str(page.relative_to(site)), html.unescape(m["tex"]))
        for page in sorted(site.rglob("*.html"))
        for m in MATH.finditer(page.read_text())
    ]
    assert len(formulas) > 50  # the guides, the metric conventions and the architecture page
    script = r"""
const katex = require(process.argv[1]);
const failures = [];
for (const [page, tex] of JSON.parse(require("fs").readFileSync(0, "utf8"))) {
  const options = {displayMode: tex.startsWith("\\["), throwOnError: true};
  try { katex.renderToString(tex.slice(2, -2), options); }
  catch (error) { failures.push([page, tex, error.message]); }
}
process.stdout.write(JSON.stringify(failures));
"""
    result = subprocess.run([node, "-e", script, str(KATEX / "katex.min.js")],
                            input=json.dumps(formulas), capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == []


def test_cli_reference_lists_every_subcommand():
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        from hooks import cli_reference
    finally:
        sys.path.remove(str(ROOT / "docs"))
    from vaekit.cli import _parser

    reference = cli_reference()
    subcommands = next(a for a in _parser()._actions if hasattr(a, "choices") and a.choices).choices
    assert all(f"## vaekit {name}" in reference for name in subcommands)


def test_rate_distortion_plot_is_written_and_checks_its_input(tmp_path):
    from PIL import Image

    from vaekit.viz import save_rate_distortion_plot

    path = save_rate_distortion_plot([3.0, 1.0, 0.1], [10.0, 12.0, 15.0], ["a", "b", "c"], tmp_path / "rd.png")
    with Image.open(path) as image:
        assert image.size == (500, 400)
    with pytest.raises(ValueError, match="same length"):
        save_rate_distortion_plot([1.0], [1.0, 2.0], ["a"], tmp_path / "bad.png")


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the tutorial's own limit below, not the suite's 600 s: a slow CPU takes ~10 minutes
@pytest.mark.parametrize("tutorial", ["vae.py", "wae.py", "point_clouds.py", "hierarchical_vae.py", "vq_vae.py",
                                      "bits_back.py"])
def test_tutorial_runs_end_to_end(tutorial, tmp_path):
    script = ROOT / "docs" / "tutorials" / tutorial
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "figures")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=1800, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    pictures = sorted(p.name for p in (tmp_path / "figures").glob("*.png"))
    documented = {"vae.py": "vae-", "wae.py": "wae-", "point_clouds.py": "pointcloud-",
                  "hierarchical_vae.py": "hvae-", "vq_vae.py": "vq-", "bits_back.py": "bitsback-"}[tutorial]
    shipped = sorted(p.name for p in (ROOT / "docs" / "images" / "tutorials").glob(f"{documented}*.png"))
    assert pictures == shipped  # the tutorial makes exactly the pictures the docs show
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
