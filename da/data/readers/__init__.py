"""Dataset readers: importing this package registers every named dataset with `da.data.domain`."""

from da.data.readers import builtin  # noqa: F401
from da.data.readers import cifar  # noqa: F401
from da.data.readers import digits  # noqa: F401
from da.data.readers import features  # noqa: F401
from da.data.readers import folders  # noqa: F401
from da.data.readers import text  # noqa: F401
