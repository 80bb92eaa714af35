"""Only the C extension lives here; everything else is in pyproject.toml.

``conspirator._native`` (native/) is optional: without a C compiler the build goes on and
the pure-Python fallback (conspirator/wire/_native_py.py) is used.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "conspirator._native",
            sources=["native/conspirator_native.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ],
)
