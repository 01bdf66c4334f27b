"""The descriptions Decouple Lab's API reads: plain data, no torch (the API never imports the models).

Each object is named by an entry point in ``pyproject.toml``; ``implementation`` is what a worker
imports to run it.
"""

from service.domain.plugins import HyperParameter, RuleInfo, TaskInfo

WINE_MLP = TaskInfo(
    name="wine_mlp",
    description="scikit-learn's bundled wine data (178 samples, 13 features, 3 cultivars), standardized, "
                "fixed stratified 75/25 split; MLP 13-32-3 with BatchNorm after the hidden layer.",
    num_classes=3,
    epochs=10,
    batch_size=16,
    train_size=133,
    val_size=45,
    input_shape=(13,),
    # The defaults a spec on this task gets for these bases when it leaves lr or wd out.
    default_grids={"signum": {"lr": (1e-3, 1e-1, 4)}, "adamax": {"lr": (1e-3, 1e-1, 4)}},
    implementation="decouple_plugin_example.wine",
)

SIGNUM = RuleInfo(
    name="signum",
    title="Signum (sign of momentum)",
    rule="m <- beta*m + (1-beta)*g; u = sign(m); theta <- theta - lr*eta_t*u",
    reference_convention="lr",
    conventions=("l2", "lr", "schedule"),
    lr=(1e-4, 1e-1, 8),
    wd={"lr": (1e-3, 10.0, 8)},
    hyperparameters=(HyperParameter("beta", 0.9, 0.0, 0.999, "momentum of the averaged gradient"),),
    kind="packed",
    implementation="decouple_plugin_example.signum:direction",
    reference="Bernstein et al. 2018, signSGD with momentum",
)

ADAMAX = RuleInfo(
    name="adamax",
    title="Adamax (torch.optim.Adamax, unchanged)",
    rule="torch.optim.Adamax: Adam with the infinity norm; weight_decay added to the gradient (L2)",
    reference_convention="l2",
    conventions=("l2",),
    lr=(1e-3, 1.0, 8),
    hyperparameters=(HyperParameter("eps", 1e-8, 1e-12, 1e-3, "added to the infinity norm"),),
    kind="torch",
    implementation="torch.optim:Adamax",
    reference="torch.optim.Adamax",
)
