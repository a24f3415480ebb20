"""Build script: the optional C++ extension ``scar_kernels._C`` (sources in ``csrc/``).

The extension is compiled against the torch that is already installed (use
``pip install --no-build-isolation -e .``). If no compiler is available or the build
fails, the pure-Python package is still installed and the kernels say once which paths
are slower.
"""
import os
import sys

from setuptools import setup


def _extensions():
    if os.environ.get("SCAR_NO_EXTENSION") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except Exception as exc:  # torch missing at build time
        print(f"scar: torch not importable at build time ({exc}); skipping the C++ extension",
              file=sys.stderr)
        return [], {}

    class OptionalBuildExtension(BuildExtension):
        """Build the extension, but never fail the install because of it."""

        def run(self):
            try:
                super().run()
            except Exception as exc:
                print(f"scar: C++ extension not built ({exc}); the pure-Python paths will be used",
                      file=sys.stderr)

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as exc:
                print(f"scar: C++ extension {ext.name} not built ({exc})", file=sys.stderr)

    sources = sorted(os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith(".cpp"))
    if not sources:
        return [], {}
    ext = CppExtension(
        name="scar_kernels._C",
        sources=sources,
        extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
        extra_link_args=["-fopenmp"],
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
