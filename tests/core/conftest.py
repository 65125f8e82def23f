"""The core's tests (tasks/core/): pure pandas, like the code they test. Run on their own they
load neither Prefect nor requests nor SQLAlchemy: tests/edge/test_layout.py runs them so and checks."""
