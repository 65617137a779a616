"""The compiled modules: Lambda's Kafka event records built in C
(`worker/lambda_compat/_kafka_rows.c`) and librdkafka's messages wrapped as records in C
(`worker/sources/kafka/_librdkafka_wrap.c`). Optional: without a compiler the install goes
on and the same work is done in Python (`lambda_compat.events`, `librdkafka_records`),
slower."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "worker.lambda_compat._kafka_rows",
            ["worker/lambda_compat/_kafka_rows.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "worker.sources.kafka._librdkafka_wrap",
            ["worker/sources/kafka/_librdkafka_wrap.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
