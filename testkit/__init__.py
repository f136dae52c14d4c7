"""What the test suite (tests/) and the benchmarks (bench/) share, so neither imports the other: small images
(`images`), real service processes and free ports (`stack`), one uvicorn API process and what it is measured with
(`api_process`), and random-weight models and adapters (`models`). Not part of the installed package."""
