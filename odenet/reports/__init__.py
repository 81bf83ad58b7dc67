"""Reports: the only layer that imports matplotlib.

Shared pieces — collecting rows and run folders (:mod:`.collect`), statistics (:mod:`.stats`), models at chance
and the conclusions withheld from them (:mod:`.chance`), markdown (:mod:`.markdown`), figures (:mod:`.figures`),
the section and plot registries (:mod:`.registry`), shared views of run folders (:mod:`.runs`), writing
(:mod:`.write`) and the command line (:mod:`.cli`) — and one module per experiment, named after it, each
registering its sections and plots when imported here. The import order below
is the order of the sections in ``report.md`` and of the plots after the built-in ones.
"""

# Registration order: the built-in plots first, then the experiments in report order.
# isort: off
from . import figures
from . import step_size_ablation
from . import plane
from . import degradation
from . import nested_growth
from . import gradient_flow
from . import identity_mapping
from . import shattered_gradients
from . import loss_landscape
from . import depth_smoothness
from . import block_lesion
from . import learned_steps
from . import regularization
from . import augmentation
from . import convergence_test
from . import step_adaptation
# isort: on
from .cli import ReportCallback, main
from .collect import BASE_COLUMNS, CHANCE_MARGIN, ReportContext, ReportError, beats_baseline, collect
from .figures import MAX_PNG_BYTES, save_figure
from .registry import Section, register_dir_plot, register_plot, register_section
from .stats import Stats, mean_std, stats
from .write import write_report

__all__ = [
    "BASE_COLUMNS",
    "CHANCE_MARGIN",
    "MAX_PNG_BYTES",
    "ReportCallback",
    "ReportContext",
    "ReportError",
    "Section",
    "Stats",
    "augmentation",
    "beats_baseline",
    "block_lesion",
    "collect",
    "convergence_test",
    "degradation",
    "depth_smoothness",
    "figures",
    "gradient_flow",
    "identity_mapping",
    "learned_steps",
    "loss_landscape",
    "main",
    "mean_std",
    "nested_growth",
    "plane",
    "register_dir_plot",
    "register_plot",
    "register_section",
    "regularization",
    "save_figure",
    "shattered_gradients",
    "stats",
    "step_adaptation",
    "step_size_ablation",
    "write_report",
]
