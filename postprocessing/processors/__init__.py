"""Processors by name; the config's ``processors`` list picks which ones an agent runs."""

from typing import Dict, List, Type

from postprocessing.config import Config
from postprocessing.processors.base import Processor
from postprocessing.processors.calvera import CalveraProcessor, CalveraReducedProcessor
from postprocessing.processors.create_script import CreateScriptProcessor
from postprocessing.processors.echo import TestProcessor
from postprocessing.processors.intersect import IntersectProcessor, IntersectReducedProcessor
from postprocessing.processors.oncat import ONCatProcessor
from postprocessing.processors.oncat_reduced import ONCatReducedProcessor
from postprocessing.processors.reduction import HighMemoryReductionProcessor, ReductionProcessor

REGISTRY: Dict[str, Type[Processor]] = {
    cls.name: cls for cls in (ReductionProcessor, HighMemoryReductionProcessor, ONCatProcessor,
                              ONCatReducedProcessor, CreateScriptProcessor, CalveraProcessor,
                              CalveraReducedProcessor, IntersectProcessor, IntersectReducedProcessor,
                              TestProcessor)
}


def build(config: Config, hostname: str) -> List[Processor]:
    """The processors the config names, in order."""
    return [REGISTRY[name](config, hostname) for name in config.processors]
