#!/usr/bin/env python3
"""Unit tests of check-modules.py's reading of Rust sources, on small synthetic crates.

    python3 scripts/test_check_modules.py
"""

import contextlib
import importlib.util
import io
import tempfile
import textwrap
import unittest
from pathlib import Path

_spec = importlib.util.spec_from_file_location("check_modules", Path(__file__).with_name("check-modules.py"))
cm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cm)


class Tree:
    """A crate's src/ folder in a temporary directory, from {relative path: source}."""

    def __init__(self, files):
        self._dir = tempfile.TemporaryDirectory()
        self.src = Path(self._dir.name) / "src"
        for rel, text in files.items():
            path = self.src / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._dir.cleanup()

    def edges(self, parent=()):
        return set(cm.level_graph(cm.Crate(self.src), parent)[1])

    def check(self, only=None):
        out = io.StringIO()
        found = cm.check(str(self.src), only, out=out)
        return found, out.getvalue()


def layered(**more):
    files = {"lib.rs": "pub mod a;\npub mod b;\npub mod c;\n", "a.rs": "", "b.rs": "", "c.rs": ""}
    files.update(more)
    return files


class Blanking(unittest.TestCase):
    def test_comments_and_literals_are_blanked_with_lines_kept(self):
        text = 'a // crate::x\n/* crate::y /* nested */ crate::z */ b\n"crate::s\\"" r#"crate::r"# \'"\' \'a c\n'
        out = cm.blank(text)
        self.assertEqual(len(out), len(text))
        self.assertEqual(out.count("\n"), text.count("\n"))
        self.assertNotIn("crate", out)
        self.assertIn(" b\n", out)
        self.assertIn("'a c", out, "a lifetime is not a char literal")

    def test_a_cfg_test_item_is_left_out_and_its_module_remembered(self):
        code = "use crate::a;\n#[cfg(test)]\n#[allow(dead_code)]\nmod tests;\n#[cfg(test)]\nmod inline {\n    use crate::b;\n}\nfn f() {}\n"
        out, mods = cm.strip_tests(code)
        self.assertEqual(mods, {"tests"})
        self.assertNotIn("crate::b", out)
        self.assertIn("use crate::a;", out)
        self.assertIn("fn f() {}", out)


class UseTrees(unittest.TestCase):
    def paths(self, tree):
        return [("::".join(p), name) for p, name in cm.use_tree_paths(tree)]

    def test_groups_nest_and_bind_names(self):
        self.assertEqual(
            self.paths("crate::{a, b::{c, d as e}, f::*, g::{self, h}}"),
            [
                ("crate::a", "a"),
                ("crate::b::c", "c"),
                ("crate::b::d", "e"),
                ("crate::f", None),
                ("crate::g", "g"),
                ("crate::g::h", "h"),
            ],
        )

    def test_relative_paths_resolve_from_the_file(self):
        self.assertEqual(cm.resolve(("x", "y"), ["super", "z", "T"], set()), ("x", "z", "T"))
        self.assertEqual(cm.resolve(("x", "y"), ["super", "super", "w"], set()), ("w",))
        self.assertEqual(cm.resolve(("x",), ["self", "k"], set()), ("x", "k"))
        self.assertEqual(cm.resolve(("x",), ["k", "T"], {"k"}), ("x", "k", "T"))
        self.assertIsNone(cm.resolve(("x",), ["serde", "Deserialize"], {"k"}), "another crate")


class TopLevel(unittest.TestCase):
    def test_a_layered_crate_passes(self):
        files = layered(**{"a.rs": "use crate::b::B;\n", "b.rs": "fn f() { crate::c::g(); }\n"})
        with Tree(files) as t:
            self.assertEqual(t.edges(), {("a", "b"), ("b", "c")})
            found, out = t.check()
            self.assertEqual(found, 0)
            self.assertIn("ok: no circular group", out)

    def test_a_circle_through_code_paths_and_use_groups_is_reported_with_its_lines(self):
        files = layered(**{
            "a.rs": "use std::fmt;\n\nuse crate::{b::{B, Bee}, c};\n",
            "b.rs": "fn f() -> crate::c::C { todo!() }\n",
            "c.rs": "pub struct C;\nimpl C {\n    fn g() { let _ = $crate::a::A; }\n}\n",
        })
        with Tree(files) as t:
            self.assertEqual(t.edges(), {("a", "b"), ("a", "c"), ("b", "c"), ("c", "a")})
            found, out = t.check()
        self.assertEqual(found, 1)
        self.assertIn("CIRCLE in crate root: a, b, c", out)
        self.assertIn("a -> b  (2 uses; first a.rs:3)", out)
        self.assertIn("c -> a  (1 uses; first c.rs:3)", out)
        self.assertIn("FAIL: 1 circular group(s)", out)

    def test_comments_strings_docs_and_tests_do_not_count(self):
        files = layered(**{
            "a.rs": """\
                //! See [`crate::b::B`].
                /// Like `crate::b::B`.
                fn f() -> &'static str { "crate::b::B" }
                /* crate::b::B */
                #[cfg(test)]
                mod tests { use crate::b::B; }
                #[cfg(test)]
                mod more;
                """,
            "a/more.rs": "use crate::b::B;\n",
            "a/tests.rs": "use crate::b::B;\n",
            "b.rs": "use crate::a::A;\n",
            "b/tests/x.rs": "use crate::c::C;\n",
        })
        with Tree(files) as t:
            self.assertEqual(t.edges(), {("b", "a")})

    def test_main_rs_is_another_crate(self):
        with Tree(layered(**{"main.rs": "use crate::a; mod a;\n", "a.rs": "use crate::b::B;\n", "b.rs": "use crate::a::A;\n"})) as t:
            self.assertEqual(t.edges(), {("a", "b"), ("b", "a")})
            self.assertEqual(cm.Crate(t.src).children(()), ["a", "b", "c"])

    def test_a_name_the_root_reexports_counts_for_its_module(self):
        files = layered(**{"lib.rs": "pub mod a;\npub mod b;\npub use b::{Thing as Other};\n", "a.rs": "fn f(_: crate::Other) {}\n"})
        with Tree(files) as t:
            self.assertEqual(t.edges(), {("a", "b")})

    def test_use_lookalikes_are_not_use_items(self):
        files = layered(**{
            "a.rs": "fn f<'a>() -> impl Sized + use<'a> { crate::b::g() }\npub(in crate::c) fn h() {}\n",
        })
        with Tree(files) as t:
            self.assertEqual(t.edges(), {("a", "b")})


class Inner(unittest.TestCase):
    FILES = {
        "lib.rs": "pub mod m;\n",
        "m/mod.rs": "mod x;\nmod y;\nmod z;\npub use y::Why;\n",
        "m/x.rs": "use super::y::Y;\n",
        "m/y.rs": "fn f() { super::z::g() }\n",
        "m/z/mod.rs": "mod p;\nmod q;\nuse super::Why;\n",
        "m/z/p.rs": "use super::q::Q;\nuse crate::m::x::X;\n",
        "m/z/q.rs": "use super::super::x;\nfn g() { super::p::P; }\n",
    }

    def test_submodules_depend_through_super_crate_paths_and_reexports(self):
        with Tree(self.FILES) as t:
            self.assertEqual(t.edges(("m",)), {("x", "y"), ("y", "z"), ("z", "y"), ("z", "x")})
            self.assertEqual(t.edges(("m", "z")), {("p", "q"), ("q", "p")})
            self.assertEqual(t.edges(), set(), "one top-level module: nothing between modules")

    def test_every_level_is_checked_and_each_circle_named(self):
        with Tree(self.FILES) as t:
            found, out = t.check()
            self.assertEqual(found, 2)
            self.assertIn("CIRCLE in m: x, y, z", out)
            self.assertIn("CIRCLE in m::z: p, q", out)
            self.assertIn("in 3 level(s)", out)
            found, out = t.check(only="m::z")
            self.assertEqual(found, 1)
            self.assertNotIn("CIRCLE in m: ", out)

    def test_the_command_exits_1_on_a_circle_and_0_without(self):
        with Tree(self.FILES) as t, contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(cm.main([str(t.src), "--inner", "m::z"]), 1)
        with Tree(layered()) as t, contextlib.redirect_stdout(io.StringIO()):
            self.assertEqual(cm.main([str(t.src)]), 0)


if __name__ == "__main__":
    unittest.main()
