"""Runs a SIPVicious tool with its sockets bound to one source address.

    python bound.py SOURCE_IP svwar|svcrack|svmap [tool arguments...]

svwar and svcrack accept `-b` but never pass it on to their scanners (sipvicious 0.3.x), so they
always send from the address the kernel picks (127.0.0.1 on loopback). The hostile-network tests
must attack from chosen loopback addresses, trusted or not, so this shim binds every socket the
tool opens to SOURCE_IP, keeping the port the tool asked for.
"""
import importlib
import socket
import sys

source, tool = sys.argv[1], sys.argv[2]
_bind = socket.socket.bind


def _bind_to_source(self, address):
    return _bind(self, (source,) + tuple(address[1:]))


socket.socket.bind = _bind_to_source
sys.argv = [f"sipvicious_{tool}"] + sys.argv[3:]
sys.exit(importlib.import_module(f"sipvicious.{tool}").main())
