"""Exit codes of ``asgi-perf``, documented in the README's CLI reference.

Apart from ``_common`` so that ``main`` has them before rich is imported:
a missing extra is a usage error too.
"""

EXIT_OK = 0
EXIT_FAILED = 1  # a budget failed, a regression passed its threshold, DB capture is off
EXIT_USAGE = 2  # bad arguments or an unusable input file
EXIT_SERVER = 3  # the app could not be reached or answered with an error
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: the reader went away, as a shell reports it
