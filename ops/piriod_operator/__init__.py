"""The operator's command line (`piriod-adapter`): not part of the Lambda artifact, which is
`src/` alone. It drives the adapter's own code (`piriod_adapter`) from an operator's machine."""
