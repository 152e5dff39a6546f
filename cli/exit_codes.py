"""Exit codes shared by every command: 0 ok/clean/same, 1 findings or differences, 2 error."""

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_ERROR = 2
