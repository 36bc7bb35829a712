"""Build hook for capture's optional compiled parts (services/capture/_fastpath.c, _meter.c).

Everything else is configured in pyproject.toml.  ``optional=True``: where no C
compiler is available the install still succeeds and capture uses the
pure-Python twins in services/capture/fastpath.py (slower, same results).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("services.capture._fastpath", ["services/capture/_fastpath.c"],
                             extra_compile_args=["-O2"], optional=True),
                   Extension("services.capture._meter", ["services/capture/_meter.c"],
                             extra_compile_args=["-O2"], optional=True),
                   # the packet recorder's record packing and writer thread (services/capture/recorder.py has twins)
                   Extension("services.capture._recfast", ["services/capture/_recfast.c"],
                             extra_compile_args=["-O2"], optional=True)])
