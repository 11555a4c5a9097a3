"""Builds the optional C kernels (native/) as ssmzip/_native*.so.

The extension is optional: without a C compiler, or if the build fails, the
install still succeeds and ssmzip runs on its numba kernels (same bytes).
Flags: -O2, no fused multiply-add, never -ffast-math (see native/cm.c).
native/ssm.c, ssm_backward.c and ssm_step.c hold the SSM (ssmzip/engine/ssm.py in C),
native/ecsq.c holds the lossy KV codec's loops (ssmzip/kv/ecsq.py), native/split.c
the lossless float codec's (ssmzip/kv/floatsplit.py) and native/split_encode.c its
whole-chunk encoder.
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildNative(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":
            flags = ["/O2", "/fp:precise"]
        else:
            # -O2 plus the loop vectoriser with its full cost model (the mixer loops:
            # integer code, so vector and scalar results are the same); -fno-math-errno
            # lets sqrtf (correctly rounded either way) vectorise (native/ssm_step.c's Adam)
            flags = ["-O2", "-std=c11", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-ftree-vectorize",
                     "-fvect-cost-model=dynamic", "-pthread"]
        for ext in self.extensions:
            ext.extra_compile_args = flags
            if self.compiler.compiler_type != "msvc":
                ext.extra_link_args = ["-pthread"]   # native/split*.c code chunks on threads
                ext.libraries = ["m"]                # log2 in native/split_encode.c
        super().build_extensions()


setup(
    ext_modules=[Extension("ssmzip._native",
                           sources=["native/cm.c", "native/ssm.c", "native/ecsq.c", "native/split.c", "native/split_encode.c",
                                    "native/bwt.c", "native/learner.c", "native/ssm_backward.c",
                                    "native/ssm_step.c"],
                           depends=["native/ecsq_kernels.h", "native/split.h", "native/learner.h", "native/ssm.h"], optional=True)],
    cmdclass={"build_ext": BuildNative},
)
