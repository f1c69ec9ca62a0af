"""The layering of the package (tools/check_imports.py): it passes on the code, and it catches what it is for."""

from __future__ import annotations

import ast
import textwrap

from tools import check_imports


def test_the_package_passes():
    assert check_imports.check() == []


def test_an_upward_import_from_ops_is_found(tmp_path, monkeypatch):
    pkg = tmp_path / "mc_jax"
    (pkg / "ops").mkdir(parents=True)
    (pkg / "kernels").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels" / "__init__.py").write_text("")
    (pkg / "ops" / "__init__.py").write_text("def f():\n    from mc_jax.kernels import x\n")  # lazy, still upward
    monkeypatch.setattr(check_imports, "ROOT", tmp_path)
    monkeypatch.setattr(check_imports, "PACKAGE", pkg)
    problems = check_imports.check()
    assert any("mc_jax.ops imports mc_jax.kernels, a layer above it" in p for p in problems), problems


def test_a_cycle_is_found():
    assert check_imports.find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert check_imports.find_cycle({"a": {"b"}, "b": set()}) is None


def test_a_long_function_in_ops_is_found(tmp_path, monkeypatch):
    path = tmp_path / "mc_jax" / "ops" / "long.py"
    path.parent.mkdir(parents=True)
    body = "\n".join(f"    x{i} = {i}" for i in range(check_imports.MAX_LINES + 1))
    path.write_text(f'def long():\n    """Docstring lines do not count."""\n{body}\n')
    ast.parse(path.read_text())
    monkeypatch.setattr(check_imports, "ROOT", tmp_path)
    assert check_imports.long_functions(path) == [
        f"mc_jax/ops/long.py:1: long has {check_imports.MAX_LINES + 1} lines (> {check_imports.MAX_LINES})"]
    short = tmp_path / "mc_jax" / "ops" / "short.py"
    short.write_text(textwrap.dedent('''
        def short():
            """A docstring."""
            return 1
    '''))
    assert check_imports.long_functions(short) == []
