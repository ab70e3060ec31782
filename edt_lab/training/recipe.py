"""The released recipe's defaults that the train command shows in --help: plain data, no imports, so that the
command's parser builds without torch."""

DEFAULT_LR = 1e-3
RELEASED_LR = {"EDT-XL/2": 5e-4}  # the released launch script starts EDT-XL at a lower rate
NO_MASKING_LR_UPDATE_EVERY = 5000  # the released no-masking script moves the rate in steps of 5,000
