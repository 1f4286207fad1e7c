"""The serve extra is optional: recstack and its CLI import without FastAPI, and `recstack serve` then
says which extra to install instead of failing with a traceback."""

from __future__ import annotations

import subprocess
import sys

# `import fastapi` (and uvicorn) fails as if the extra were not installed
WITHOUT_SERVE = "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"


def test_recstack_imports_without_fastapi_and_serve_names_the_extra(tmp_path):
    code = WITHOUT_SERVE + (
        "import recstack, recstack.cli, recstack.serve, recstack.experiment\n"
        "assert 'starlette' not in sys.modules and 'prometheus_client' not in sys.modules\n"
        f"sys.argv = ['recstack', 'serve', {str(tmp_path)!r}]\n"
        "recstack.cli.main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2 and "recstack[serve]" in result.stderr, result.stderr
