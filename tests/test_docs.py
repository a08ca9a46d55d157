"""The docs render without broken links, and the README's commands are the CI's."""

import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + [os.path.join("docs", f) for f in sorted(os.listdir(os.path.join(ROOT, "docs")))
                        if f.endswith(".md")]


@pytest.mark.parametrize("doc", DOCS)
def test_relative_links_resolve(doc):
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    for target in re.findall(r"\]\(([^)]+)\)", text):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), target.split("#")[0]))
        assert os.path.exists(path), f"{doc} links to missing {target}"


def test_ci_runs_the_readme_test_command():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = f.read()
    command = re.search(r"```sh\n(scripts/install-test-deps[^\n]*)\n```", readme).group(1)
    assert command in ci


def test_every_verb_is_documented():
    from skypty.client.main import VERBS

    with open(os.path.join(ROOT, "docs", "guide.md")) as f:
        guide = f.read()
    for verb in VERBS:
        assert f"`{verb}" in guide or f"{verb}`" in guide, verb


def test_readme_and_guide_name_the_public_networks_the_code_uses():
    from skypty.config import NETWORKS

    for doc in ("README.md", os.path.join("docs", "guide.md")):
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        for name, url in NETWORKS.items():
            assert f"--network {name}" in text and url in text, (doc, name)


def test_fuse_extra_is_documented_with_its_install_command():
    for doc in ("README.md", os.path.join("docs", "guide.md")):
        with open(os.path.join(ROOT, doc)) as f:
            text = f.read()
        assert "apt install libfuse-dev pkg-config fuse3" in text and "pip install '.[fuse]'" in text, doc


def test_guide_names_every_log_level():
    from skypty.logs import LEVELS

    with open(os.path.join(ROOT, "docs", "guide.md")) as f:
        row = next(line for line in f if line.startswith("| `pty.log_level`"))
    for name in LEVELS:
        assert f"`{name}`" in row, name


def test_architecture_names_every_module():
    """Each module has a line (or a place on a line of its folder: `dir/a.py, b.py`)."""
    with open(os.path.join(ROOT, "docs", "architecture.md")) as f:
        lines = f.read().splitlines()
    package = os.path.join(ROOT, "skypty")
    for directory, _, files in os.walk(package):
        for name in files:
            if not name.endswith(".py") or name == "__init__.py":
                continue
            path = os.path.relpath(os.path.join(directory, name), ROOT)
            folder = os.path.dirname(path) + "/"
            assert any(line.startswith(path + " ") or (line.startswith(folder) and
                                                     re.search(rf"(^|[ ,/]){re.escape(name)}[ ,]", line))
                       for line in lines), path
