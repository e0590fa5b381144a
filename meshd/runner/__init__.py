"""The runner: a child process that hosts one model (the only code that imports llama_cpp).

A crash, an abort or a hang inside llama.cpp ends the runner, never the daemon. Importing this
package does not import llama_cpp: `protocol` is shared with the daemon; `serve`, `slot`,
`generation` and `llamalog` run only in the child (`python -m meshd.runner`).
"""
