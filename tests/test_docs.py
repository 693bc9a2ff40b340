"""The README's tables agree with the registries and the config: a component added without its row
(or a row left for a removed one) fails here, so the documentation cannot drift from the code."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from repgossip.cli import registries
from repgossip.schema import KEYS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def table_rows(header: str) -> dict[str, str]:
    """First-cell -> whole line of the Markdown table whose header row starts with `header`."""
    lines = README.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip()] = line
    return rows


def test_the_algorithm_table_lists_exactly_the_registered_algorithms():
    rows = table_rows("| `algorithm` | local phases")
    assert set(rows) == {f"`{name}`" for name in registries()["algorithm"].names()}


def test_the_config_table_documents_every_key():
    documented = {
        key.strip("` ") for cell in table_rows("| key | default") for key in re.split(r"[,/]", cell)
    }
    assert set(KEYS) <= documented, set(KEYS) - documented


@pytest.mark.parametrize("key", list(registries()))
def test_each_config_row_names_every_registered_choice(key):
    row = table_rows("| key | default")[f"`{key}`"]
    missing = [name for name in registries()[key].names() if name not in row]
    assert not missing, f"README's `{key}` row lacks {missing}"


def test_the_project_stands_on_its_own():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    files = [ROOT / f for f in tracked.stdout.split() if f.endswith((".py", ".md", ".toml", ".sh"))]
    pointing = [f.name for f in files if re.search(r"\.\./shared|DESIGN\.md", f.read_text())]
    assert pointing == []


def test_the_readme_shows_the_own_pytorch_example_as_it_is():
    """The script a new user copies is the one `make test` runs (examples/run_all.sh)."""
    code = (ROOT / "examples" / "own_pytorch.py").read_text()
    assert f"```python\n{code}```" in README
    assert "python own_pytorch.py" in (ROOT / "examples" / "run_all.sh").read_text()


CONTRIBUTING = (ROOT / "CONTRIBUTING.md").read_text()


def test_contributings_registration_snippet_keeps_every_registered_algorithm():
    """Copying the snippet must not unregister anything: it names every built-in class."""
    snippet = re.search(r"for _cls in \(([^)]*)\):\n\s*ALGORITHMS", CONTRIBUTING)
    source = (ROOT / "src" / "repgossip" / "algorithms" / "__init__.py").read_text()
    registered = re.search(r"for _cls in \(([^)]*)\):\n\s*ALGORITHMS", source)
    assert snippet and registered
    names = lambda match: {n.strip() for n in match.group(1).split(",") if n.strip()}  # noqa: E731
    assert names(snippet) == names(registered) | {"ProxDePRL"}


def test_contributing_lists_every_error_and_its_exit_code():
    from repgossip import errors

    kinds = [c for c in vars(errors).values()
             if isinstance(c, type) and issubclass(c, errors.RepgossipError)
             and c is not errors.RepgossipError]  # fmt: skip
    for kind in kinds:
        code = kind.__dict__.get("exit_code")
        shown = f"{code} (`{kind.__name__}`)" if isinstance(code, int) else f"(`{kind.__name__}`"
        assert shown in CONTRIBUTING.replace("\n", " "), shown


def test_the_outputs_section_names_every_key_summary_json_adds():
    """Every key summary.json holds beyond the last evaluation record is named in the README's
    `summary.json` entry (per_worker_train_samples was added without it once)."""
    import torch

    import repgossip

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, generator=gen), torch.randint(0, 2, (40,), generator=gen)
    result = repgossip.run({"workers": 2, "rounds": 1}, data=((x, y), (x, y)))
    entry = README.split("- `summary.json`:", 1)[1].split("\n- ", 1)[0]
    added = set(result.summary) - set(result.history[-1])
    assert "per_worker_train_samples" in added
    assert [key for key in sorted(added) if f"`{key}`" not in entry] == []


def test_the_readme_demo_table_has_the_columns_the_sweep_prints():
    """The demo table is pasted from `make demo`'s output: its header is the one `repgossip
    sweep` prints for a classification grid over algorithms."""
    from repgossip.tables import RESULT_COLUMNS, STATUS, printed_table

    row = {"algorithm": "deprl", STATUS: "ok"} | {
        key: 1.0 for key in RESULT_COLUMNS if key != "subspace_dist"
    }
    printed = printed_table([row], ["algorithm"]).splitlines()[0]
    assert printed in README.splitlines()


def test_each_components_own_parameters_have_their_generated_readme_row():
    """The rows of a component's parameters (an algorithm's, a dataset's, a partition's, a
    topology's) are made from their declaration (components.key_rows): default, range and doc are
    written once, next to the code."""
    from repgossip.components import key_rows

    for row in key_rows():
        assert row in README.splitlines(), row


def test_each_core_keys_readme_default_is_its_default_in_the_schema():
    """The default column of every core key's row says the schema's default (`none`, `true`, a
    number, a name), or describes a default that depends on other keys."""
    from repgossip.schema import DEFAULTS

    described = {"model", "partition", "samples_per_worker", "lr", "momentum", "head_epochs",
                 "body_epochs", "beta1", "beta2", "eps", "lr_head", "lr_body", "gossip_first"}  # fmt: skip
    rows = table_rows("| key | default")
    for key, default in DEFAULTS.items():
        if key in described or f"`{key}`" not in rows:
            continue
        cell = rows[f"`{key}`"].split("|")[2].strip().strip("`")
        if default is None or isinstance(default, bool):
            assert cell == {None: "none", True: "true", False: "false"}[default], key
        elif isinstance(default, (int, float)):
            assert float(cell) == default, (key, cell, default)
        else:
            assert cell == default, (key, cell, default)


def test_the_core_keys_readme_rows_are_their_docs_in_the_schema():
    """README's row of every core key is made from schema.KEY_DOCS, which `repgossip keys`
    prints: the doc of a key is written once, in the code."""
    from repgossip.schema import KEY_DOCS, key_doc

    lines = README.splitlines()
    for cell, default, meaning in KEY_DOCS:
        assert f"| {cell} | {default} | {meaning} |" in lines, cell
    assert all(key_doc(key) for key in KEYS), [k for k in KEYS if not key_doc(k)]
