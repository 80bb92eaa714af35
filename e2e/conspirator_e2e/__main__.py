"""``python -m conspirator_e2e`` (with e2e/ on PYTHONPATH): the cluster CLI."""

import sys

if sys.argv[1:2] == ["images"]:  # the test images and the product images (images.py)
    from conspirator_e2e.images import main as images_main

    sys.exit(images_main(sys.argv[2:]))

from conspirator_e2e.cluster import main

sys.exit(main())
