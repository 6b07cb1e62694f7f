"""`jaxdiff bench`: placeholder until issue 5 lands."""

import argparse

from jaxdiff.cli._pending import pending


def add_arguments(parser):
  parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)


run = pending("bench", 5)
