"""The C part of the package: the message properties codec (``_speedups.c``).

It is optional: where it cannot be built (no C compiler) the package installs
without it and uses the same codec in Python.  Everything else is in
pyproject.toml.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "trio_lavin._sansio._speedups",
            ["trio_lavin/_sansio/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ]
)
