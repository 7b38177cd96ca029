"""plugin/callbacks"""
