"""The botocore session every AWS client of a container is made from, with botocore's data
loaded the quick way (measured by `make bench`, a cold start to the first answer):

- botocore checks that a client's service is one it knows by listing the directory of every
  service it has (about 400) once per kind of file it then loads (the API model, the
  endpoint rules): about 10 ms each. The loader here knows the few services the adapter
  calls and looks only at their directories.
- botocore reads its JSON files into OrderedDicts, about twice as slow as dicts for its 1.2 MB
  endpoints.json and each API model; dicts keep their order too, and botocore's model
  classes build their own ordered maps from what is read.

Everything else, and every answer, is botocore's own: the files read are the same files,
found on the same search path (AWS_DATA_PATH included), so the clients are the same."""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

from botocore.loaders import JSONFileLoader, Loader
from botocore.session import Session

# Every service a Runtime makes a client for (runtime.py; the operator's status view reads
# CloudWatch). A client of any other service from this session is refused as unknown.
SERVICES = ("dynamodb", "sqs", "secretsmanager", "ssm", "cloudwatch")

_OPEN_METHODS: tuple[tuple[str, Any], ...] = ((".json", open), (".json.gz", gzip.open))


class _PlainJSONFileLoader(JSONFileLoader):
    """botocore's JSON file loader, reading into plain dicts."""

    def load_file(self, file_path: str) -> Any:
        for extension, open_method in _OPEN_METHODS:
            path = file_path + extension
            if os.path.isfile(path):
                with open_method(path, "rb") as handle:
                    return json.loads(handle.read())
        return None


class _KnownServicesLoader(Loader):
    """botocore's loader, listing only the adapter's services."""

    def list_available_services(self, type_name: str) -> list[str]:
        return [name for name in SERVICES if self.list_api_versions(name, type_name)]


def session() -> Session:
    """A botocore session whose clients load their data as described above."""
    made = Session()
    paths = made.get_config_variable("data_path")  # AWS_DATA_PATH, as create_loader reads it
    loader = _KnownServicesLoader(
        extra_search_paths=(
            [os.path.expanduser(os.path.expandvars(p)) for p in paths.split(os.pathsep)]
            if paths is not None
            else None
        ),
        file_loader=_PlainJSONFileLoader(),
    )
    made.register_component("data_loader", loader)
    return made
