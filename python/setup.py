"""Only what pyproject.toml cannot say: a wheel that carries libmemwall.so is specific to the
platform (linux x86-64 or aarch64), not pure Python — although nothing is compiled at install
and any Python 3 can load it (ctypes), so its tag is py3-none-<platform>."""

from pathlib import Path

from setuptools import setup
from setuptools.dist import Distribution

carries_library = (Path(__file__).parent / "memwall" / "libmemwall.so").exists()


class BinaryDistribution(Distribution):
    """Puts the package in the wheel's platform part (platlib), beside its native library."""

    def has_ext_modules(self) -> bool:
        return carries_library


cmdclass = {}
try:
    from wheel.bdist_wheel import bdist_wheel
except ImportError:  # no wheel package: an sdist or a plain install needs no tag
    bdist_wheel = None

if bdist_wheel is not None and carries_library:
    class PlatformWheel(bdist_wheel):  # type: ignore[misc, valid-type]
        def get_tag(self):  # type: ignore[no-untyped-def]
            _, _, platform = super().get_tag()
            return "py3", "none", platform

    cmdclass["bdist_wheel"] = PlatformWheel

setup(distclass=BinaryDistribution, cmdclass=cmdclass)
