"""Import torchvision beside the CPU build of torch: PyPI's torchvision 0.28.0 is a CUDA build
whose meta registrations fail to import there; nothing the CPU models use needs them."""
import sys
import types

sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
