"""The pure core: frames in, frames out. No Prefect, requests or SQLAlchemy is imported here
(tests/edge/test_layout.py proves it), so the planner runs in milliseconds anywhere."""
