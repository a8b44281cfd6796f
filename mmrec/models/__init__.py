"""Model families ("heads") behind one interface (`mmrec.models.base.Head`), chosen by the
`head` config key. Importing this package registers the built-in heads; a plug-in registers its
own with `register_head`."""
from mmrec.models.base import (HEADS, Head, ItemColdStartHead, UserColdStartHead, build_model,  # noqa: F401
                               head_class, load_run, load_run_data, register_head)
from mmrec.models import clcrec, cmclrec, mmrec_model, sasrec  # noqa: F401,E402  (the built-in heads)
