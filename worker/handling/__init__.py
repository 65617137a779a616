"""Calling the user's handler and deciding what happens when it fails.

`handler` loads it; `invoker` calls it (async, thread or process, bounded by
the timeout); `failure_policy` is the step that retries, bisects, reads
partial responses and gives up; `dead_letter` guards and performs giving up.
"""
