"""Packaging for medseg-nb: metadata and requirements come from settings.ini (the nbdev 2 convention)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
config = ConfigParser(delimiters=["="])
config.read(here / "settings.ini", encoding="utf-8")
cfg = config["DEFAULT"]

for key in ("version", "description", "repo", "user", "author", "author_email", "license", "min_python"):
    if key not in cfg:
        raise ValueError(f"settings.ini has no '{key}' entry; add it under [DEFAULT]")

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
status_names = ["Planning", "Pre-Alpha", "Alpha", "Beta", "Production/Stable", "Mature", "Inactive"]
license_name, license_classifier = licenses[cfg["license"]]

requirements = cfg.get("requirements", "").split()
dev_requirements = cfg.get("dev_requirements", "").split()
console_scripts = cfg.get("console_scripts", "").split()
readme = here / "README.md"

setuptools.setup(
    name=cfg["repo"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=readme.read_text(encoding="utf-8") if readme.exists() else "",
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=license_name,
    url=cfg.get("git_url", ""),
    keywords=cfg.get("keywords", ""),
    classifiers=[
        "Development Status :: " + cfg["status"] + " - " + status_names[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"],
        "License :: " + license_classifier,
        "Natural Language :: " + cfg["language"],
        "Programming Language :: Python :: 3.11",
    ],
    packages=setuptools.find_packages(include=["medseg_nb", "medseg_nb.*"]),
    include_package_data=True,
    install_requires=requirements,
    extras_require={"dev": dev_requirements},
    python_requires=">=" + cfg["min_python"],
    zip_safe=False,
    entry_points={"console_scripts": console_scripts, "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
)
