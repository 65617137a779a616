"""The one compiled module: Lambda's Kafka event records built in C
(`worker/lambda_compat/_kafka_rows.c`). Optional: without a compiler the install goes on
and `worker.lambda_compat.events` builds the same records in Python, slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "worker.lambda_compat._kafka_rows",
            ["worker/lambda_compat/_kafka_rows.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
