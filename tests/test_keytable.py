"""The README's key table is the schema's: every key once, its default per option, its doc."""

import dataclasses

import pytest

from tests.conftest import ROOT
from trainer import keytable
from trainer.config import SCHEMAS

pytestmark = pytest.mark.integration  # composes every group option with Hydra (about 10 s)


@pytest.fixture(scope="module")
def table():
    return keytable.render()


def test_readme_key_table_is_rendered_from_the_schema(table):
    readme = (ROOT / "README.md").read_text()
    head, _, rest = readme.partition(keytable.BEGIN + "\n")
    assert rest.partition(keytable.END)[0] == table, "README.md's key table is out of date: run `make docs`"


def test_every_key_has_a_doc_and_one_row(table):
    for group, options in SCHEMAS.items():
        for schema in options.values():
            for f in dataclasses.fields(schema):
                if f.name != "_target_":
                    assert f.metadata.get("doc"), f"{schema.__name__}.{f.name} has no doc"
                    assert table.count(f"| `{group}.{f.name}` |") == 1, f"{group}.{f.name}: not one row"
