"""The programs: every console script's `main`, its flags and its error handling (the top floor of the house).

Each module here is one program (`l2l-train` is `train.py`, ...); `flags` holds the one flag table and the one
error boundary (`run_program`). Programs import the library; the library never imports a program.
"""
