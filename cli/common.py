"""What the commands share."""
import argparse


class UserError(Exception):
  """A mistake the user can fix; shown as one line, without a traceback."""


def add_verbose(parser):
  """--verbose, on every command: an unexpected failure's message asks for it."""
  parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                      help="show tracebacks of failures and TensorFlow's C++ errors")
