"""Only what pyproject.toml cannot say: a wheel that carries libmemwall.so is specific to the
platform (linux x86-64 or aarch64), not pure Python, although no code is compiled at install."""

from pathlib import Path

from setuptools import setup

try:
    from wheel.bdist_wheel import bdist_wheel
except ImportError:  # wheel not installed: plain setup (pip's isolated build has it)
    bdist_wheel = None

cmdclass = {}
if bdist_wheel is not None and (Path(__file__).parent / "memwall" / "libmemwall.so").exists():
    class PlatformWheel(bdist_wheel):  # type: ignore[misc, valid-type]
        def finalize_options(self) -> None:
            super().finalize_options()
            self.root_is_pure = False

        def get_tag(self):  # type: ignore[no-untyped-def]
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = PlatformWheel

setup(cmdclass=cmdclass)
