//! Oracle tests only (see `tests/`): cvm's measurements against other implementations.
