"""The size bounds of the language, so that bad input fails fast (one place for all of them)."""

MAX_EXPR_DEPTH = 100  # operators nested in one expression (parentheses add no depth)
MAX_DIGITS = 300  # in one number: beyond this no value of the language is in range anyway
MAX_NUMBER = 10**300  # larger intermediate values are an error (they stay printable as floats)
MAX_PATHS = 64
MAX_PARAM = 1_000_000  # no operation parameter is larger: guards shape and cost arithmetic
MAX_INPUT_VALUES = 2**26  # C*H*W of one input sample (256 MiB of float32), e.g. 3x4096x4096
MAX_LEVELS = 10_000  # levels after repeats are expanded
MAX_REPEAT = 10_000  # copies made by one `repeat`
MAX_BLOCKS = 2**16  # levels x paths: bounds the size of the IR and the time to build it
